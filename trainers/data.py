"""Input pipeline: TFDS array_record files -> grain MapDataset of normalized batches.

The same code serves mnist5k (offline default) and CIFAR-10. Everything is a random-access
`grain.MapDataset`, so batch number `step` is simply `ds[step]`: a run resumed at step k
needs the seed and k, not iterator state.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from . import mnist5k

SPLIT_KEYS = ('train', 'val', 'test')


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the pipeline needs to know about one dataset."""
  tfds_name: str
  image_shape: tuple[int, int, int]  # (H, W, C)
  num_classes: int
  mean: tuple[float, ...]  # per channel, on the 0..1 scale
  std: tuple[float, ...]
  augment: bool  # DARTS CIFAR augmentation: random crop with 4-pixel zero pad + h-flip.
  splits: dict[str, str]  # 'train' | 'val' | 'test' -> TFDS split string.


DATASETS: dict[str, DatasetSpec] = {
    'mnist5k': DatasetSpec(
        tfds_name='mnist5k', image_shape=(28, 28, 1), num_classes=10,
        mean=(0.1307,), std=(0.3081,), augment=False,
        splits={'train': 'train', 'val': 'val', 'test': 'test'}),
    # DARTS searches on CIFAR-10's training set cut in two halves: weights / alphas.
    'cifar10': DatasetSpec(
        tfds_name='cifar10', image_shape=(32, 32, 3), num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), augment=True,
        splits={'train': 'train[:50%]', 'val': 'train[50%:]', 'test': 'test'}),
}


class DatasetNotFoundError(FileNotFoundError):
  """The dataset is not prepared (as array_record) in the data directory."""


def get_spec(name: str) -> DatasetSpec:
  try:
    return DATASETS[name]
  except KeyError:
    raise ValueError(f'Unknown dataset {name!r}; valid names: {sorted(DATASETS)}') from None


def _tfds_split(spec: DatasetSpec, split_key: str) -> str:
  """'train', 'val', 'test', or several joined by '+' (retraining uses 'train+val')."""
  keys = split_key.split('+')
  unknown = [k for k in keys if k not in spec.splits]
  if unknown:
    raise ValueError(f'Unknown split {"+".join(unknown)!r}; valid keys: {list(spec.splits)} '
                     "(or several joined by '+', e.g. 'train+val')")
  return '+'.join(spec.splits[k] for k in keys)


def _not_prepared(spec: DatasetSpec, data_dir: str, problem: str) -> DatasetNotFoundError:
  fix = (f"pip install 'dnas[cifar]' && python -c \"import tensorflow_datasets as tfds; "
         f"tfds.builder('{spec.tfds_name}', data_dir='{data_dir}')"
         f".download_and_prepare(file_format='array_record')\"")
  return DatasetNotFoundError(
      f'{problem}; tfds.data_source needs array_record files. Prepare them once '
      f'(needs TensorFlow): {fix}')


def load_source(name: str, split_key: str, data_dir: str | os.PathLike):
  """Random-access source (len, [i] -> {'image': uint8 HWC, 'label': int}) via TFDS."""
  spec = get_spec(name)
  split = _tfds_split(spec, split_key)
  data_dir = os.path.expanduser(os.fspath(data_dir))
  if '://' in data_dir:
    # array_record reads local files only (google/array_record#120, tensorflow/datasets#5100).
    raise DatasetNotFoundError(
        f'data_dir {data_dir} is not a local path: random-access array_record files are read '
        'from local disk only. Copy the prepared dataset to each host first, e.g. '
        f'`gcloud storage cp -r {data_dir.rstrip("/")}/{spec.tfds_name} ~/tensorflow_datasets/`'
        ' (launch/tpu.py does this on every TPU worker), and pass that local data_dir')
  if spec.tfds_name == 'mnist5k':
    mnist5k.ensure_prepared(data_dir)
  # Checked here because TFDS, asked not to download, reports a missing dataset as an
  # unsupported TFRecord file format, which hides the actual problem.
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
  if not (builder.data_path.exists() and builder.is_prepared()):
    raise _not_prepared(spec, data_dir, f'{spec.tfds_name} {builder.version} is not prepared '
                        f'in data_dir {data_dir}')
  try:
    return tfds.data_source(spec.tfds_name, split=split, data_dir=data_dir, download=False)
  except NotImplementedError as e:  # Prepared, but as TFRecord (no random access).
    raise _not_prepared(
        spec, data_dir, f'{spec.tfds_name} in data_dir {data_dir} is prepared as '
        f'{builder.info.file_format.value} ({builder.data_path}): delete that folder or use '
        'another data_dir') from e


def num_examples(name: str, split_key: str, data_dir: str | os.PathLike) -> int:
  return len(load_source(name, split_key, data_dir))


def random_crop_flip(image: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
  """DARTS CIFAR augmentation on one HWC image: RandomCrop(H, padding=pad) + h-flip.

  Applied to raw pixels before normalization, so the padding is black (0), as in
  torchvision's RandomCrop on PIL images used by DARTS.
  """
  h, w, _ = image.shape
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  dy, dx = rng.integers(0, 2 * pad + 1, size=2)
  out = padded[dy:dy + h, dx:dx + w]
  if rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def cutout(image: np.ndarray, rng: np.random.Generator, length: int) -> np.ndarray:
  """DARTS' Cutout (DeVries & Taylor, 2017) on one normalized HWC image: zero a
  length x length square, clipped at the border, centred on a uniformly drawn pixel.

  Applied after normalization, as the reference (utils.Cutout follows Normalize), so the
  hole has the dataset's mean colour.
  """
  h, w = image.shape[:2]
  y, x = rng.integers(0, h), rng.integers(0, w)
  out = image.copy()
  out[max(0, y - length // 2):y + length // 2, max(0, x - length // 2):x + length // 2] = 0
  return out


def _cutout_record(record: dict[str, np.ndarray], rng: np.random.Generator, length: int):
  return {'image': cutout(record['image'], rng, length), 'label': record['label']}


def _select(record: dict[str, Any]) -> dict[str, np.ndarray]:
  # Drops extra features (CIFAR-10 has a string 'id') so batches hold only arrays we use.
  return {'image': np.asarray(record['image']), 'label': np.asarray(record['label'])}


def _augment(record: dict[str, np.ndarray], rng: np.random.Generator):
  return {'image': random_crop_flip(record['image'], rng), 'label': record['label']}


def normalize(batch: dict[str, np.ndarray], mean, std) -> dict[str, np.ndarray]:
  """uint8 images -> float32 (x / 255 - mean) / std per channel; labels -> int32."""
  image = batch['image'].astype(np.float32) / 255.0
  image = (image - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  return {'image': image, 'label': batch['label'].astype(np.int32)}


def make_dataset(name: str, split_key: str, *, batch_size: int, seed: int | None,
                 train: bool, data_dir: str | os.PathLike, cutout_length: int = 0,
                 shard_index: int = 0, num_shards: int = 1) -> grain.MapDataset:
  """Batches {'image': float32 (B, H, W, C), 'label': int32 (B,)}, indexable by step.

  train=True: infinite; batch `step` is `ds[step]`, a pure function of (seed, step).
    `ds.seed(seed)` derives the shuffle and augmentation seeds. The shuffle sits under
    `repeat`, so it sees the global index and uses a fresh permutation every epoch;
    `random_map` seeds each record's RNG from the seed and the global index, so the
    augmentation also differs between epochs. On an infinite stream drop_remainder drops
    nothing: if batch_size does not divide the split, one batch spans two epochs.
  train=False: one pass in file order, the last partial batch kept, for evaluation.
  cutout_length > 0 (train only): Cutout of that size after normalization, its RNG seeded
    from the seed and the record's global index.
  num_shards > 1 (one share per process of a multi-host run): `batch_size` is the global
    batch and each process reads only its rows. train=True: `ds[step]` is rows
    [shard_index * b, (shard_index + 1) * b) of global batch `step` (b = batch_size /
    num_shards), which is then exactly what one process reading everything would see.
    train=False: chunks of b in file order; `evaluate` deals them out to the processes.
  Every random draw depends on the record's global index only, never on num_shards.
  """
  spec = get_spec(name)
  if batch_size % num_shards:
    raise ValueError(f'batch size {batch_size} does not split over {num_shards} processes')
  ds = grain.MapDataset.source(load_source(name, split_key, data_dir)).map(_select)
  if train:
    if seed is None:
      raise ValueError('make_dataset(train=True) needs an integer seed.')
    ds = ds.seed(seed).shuffle().repeat()
    if spec.augment:
      ds = ds.random_map(_augment)
  ds = ds.map(functools.partial(normalize, mean=spec.mean, std=spec.std))
  if train and cutout_length > 0:
    ds = ds.random_map(functools.partial(_cutout_record, length=cutout_length))
  ds = ds.batch(batch_size // num_shards, drop_remainder=train)
  if train and num_shards > 1:
    ds = ds[shard_index::num_shards]  # global batch s = local chunks s*n .. s*n + n - 1
  return ds


def evaluate(eval_batch, state, dataset, batch_size: int, *, to_global=None,
             shard_index: int = 0, num_shards: int = 1) -> float:
  """Accuracy of `eval_batch(state, batch, mask) -> correct count` over a whole split. The last
  partial batch is padded (and masked) so that one compiled shape serves every batch.

  Several processes (`num_shards`): `dataset` holds chunks of the local batch size
  `batch_size`; global batch i is chunks i*n .. i*n + n - 1, this process feeding chunk
  i*n + shard_index (a fully masked one past the end); `to_global` assembles the processes'
  rows into global arrays. The count is a global sum, the same on every process."""
  chunks = len(dataset)
  correct = 0
  for i in range(-(-chunks // num_shards)):
    c = i * num_shards + shard_index
    batch = dataset[min(c, chunks - 1)]
    n = len(batch['label']) if c < chunks else 0
    if len(batch['label']) < batch_size:
      batch = {k: np.concatenate([v, np.repeat(v[:1], batch_size - len(v), 0)])
               for k, v in batch.items()}
    mask = np.arange(batch_size) < n
    if to_global is not None:
      batch, mask = to_global((batch, mask))
    correct += int(eval_batch(state, batch, mask))
  total = (chunks - 1) * batch_size + len(dataset[chunks - 1]['label'])
  return correct / total
