"""Image data sets as numpy arrays: scikit-learn's 8×8 digits (offline) and CIFAR-10/100 (prepared with tfds).

:func:`load` returns an :class:`ImageSplits`: train and held-out images ``[N, H, W, C]`` float32 in
``[-1, 1]`` with int32 labels. Loading happens once, outside any jitted code; the result is cached in memory
(the arrays are read-only, since every caller shares them).

* ``"digits"`` — ``sklearn.datasets.load_digits()``: 1,797 images 8×8×1, 10 classes, pixel values 0..16
  (mapped by ``x / 8 - 1``), split into train / held-out by a seeded stratified split (20% held out per
  class). It ships inside scikit-learn: no download.
* ``"cifar10"``, ``"cifar100"`` — read with ``tfds.data_source`` (random access to ArrayRecord files; no
  TensorFlow needed to *read*). The data must have been prepared once, in the ``array_record`` file format,
  which needs TensorFlow: ``tfds build cifar10 --file_format=array_record [--data_dir=DIR]``. Images uint8
  32×32×3 -> ``x / 127.5 - 1``; labels from the ``"label"`` feature (CIFAR-100: the 100 fine classes). The
  train / test split is the data set's own; ``seed`` does not change it.

Other image sets can be registered: ``IMAGE_SETS.register("mine", lambda data_dir, seed: ImageSplits(...))``
(``seeded=False`` when the split does not depend on ``seed``).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, NamedTuple

import numpy as np

from scl.registry import Registry


class ImageSplits(NamedTuple):
  """A labelled image data set, split into training and held-out images.

  Attributes:
    train_x: ``[N, H, W, C]`` float32 in ``[-1, 1]``.
    train_y: ``[N]`` int32 class labels in ``[0, num_classes)``.
    test_x: ``[M, H, W, C]`` held-out images (same scaling).
    test_y: ``[M]`` int32 held-out labels.
    num_classes: the number of classes.
    name: the data set's name (``"digits"``, ``"cifar10"``, ``"cifar100"``).
  """

  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int
  name: str


#: name -> ``(data_dir: str | None, seed: int) -> ImageSplits``.
IMAGE_SETS = Registry("image data set", "dataset", "(data_dir: str | None, seed: int) -> ImageSplits")

#: Fraction of each digits class held out.
DIGITS_TEST_FRACTION = 0.2

#: Records read per ``__getitems__`` call when reading a tfds split.
READ_CHUNK = 4096


def load(name: str, *, data_dir: str | None = None, seed: int = 0) -> ImageSplits:
  """The image data set ``name`` as an :class:`ImageSplits` (cached in memory; arrays read-only).

  Args:
    name: a registered image data set: ``"digits"``, ``"cifar10"``, ``"cifar100"``.
    data_dir: where tfds finds prepared data sets (default: tfds' own, ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``); ignored by ``"digits"``.
    seed: seeds the held-out split of ``"digits"``; the CIFAR splits are fixed.

  Raises:
    ValueError: unknown ``name`` (the message lists the choices).
    FileNotFoundError: a CIFAR set that is not prepared under ``data_dir``; the message gives the command
      that prepares it.
  """
  IMAGE_SETS.check(name)
  if data_dir is not None:
    data_dir = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
  if not IMAGE_SETS.meta(name, "seeded", True):
    seed = 0  # the split does not depend on it: one cache entry
  return _load_cached(name, data_dir, int(seed))


def clear_cache() -> None:
  """Forget every split :func:`load` has cached (e.g. after a test loaded mocked data)."""
  _load_cached.cache_clear()


@functools.lru_cache(maxsize=None)
def _load_cached(name: str, data_dir: str | None, seed: int) -> ImageSplits:
  splits = IMAGE_SETS[name](data_dir, seed)
  _check_splits(name, splits)
  for a in splits[:4]:
    a.setflags(write=False)
  return splits


def _check_splits(name: str, s: ImageSplits) -> None:
  if not isinstance(s, ImageSplits):
    raise TypeError(f"image data set {name!r} must return an ImageSplits, got {type(s).__name__}")
  for field in ("train", "test"):
    x, y = getattr(s, field + "_x"), getattr(s, field + "_y")
    if x.ndim != 4 or x.dtype != np.float32 or y.shape != (x.shape[0],) or y.dtype != np.int32:
      raise ValueError(f"image data set {name!r}: {field}_x must be float32 [N, H, W, C] and {field}_y int32 "
                       f"[N]; got {x.dtype}{list(x.shape)} and {y.dtype}{list(y.shape)}")
  if s.train_x.shape[1:] != s.test_x.shape[1:]:
    raise ValueError(f"image data set {name!r}: train and test images differ in shape")
  C = s.num_classes
  if isinstance(C, bool) or not isinstance(C, (int, np.integer)) or C < 2:
    raise ValueError(f"image data set {name!r}: num_classes={C!r} must be an integer >= 2")
  for field in ("train", "test"):
    x, y = getattr(s, field + "_x"), getattr(s, field + "_y")
    if x.shape[0] == 0:
      raise ValueError(f"image data set {name!r}: the {field} split has no images")
    if y.min() < 0 or y.max() >= C:  # else a classifier's cross-entropy is NaN (too high) or wrong (negative)
      raise ValueError(f"image data set {name!r} ({field}): labels must lie in [0, {C}); got labels in "
                       f"[{y.min()}, {y.max()}]")
    if not np.all(np.isfinite(x)):
      raise ValueError(f"image data set {name!r} ({field}): {int(np.sum(~np.isfinite(x)))} non-finite pixel "
                       "values")


# -- digits (scikit-learn) ---------------------------------------------------------------------------------


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices ``(train, test)``: ``round(test_fraction * n_c)`` of each class held out, chosen by ``seed``;
  both index sets in a seeded random order."""
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(y):
    idx = rng.permutation(np.flatnonzero(y == c))
    k = int(round(test_fraction * idx.size))
    test.append(idx[:k])
    train.append(idx[k:])
  return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


@IMAGE_SETS.register("digits")
def _digits(data_dir: str | None, seed: int) -> ImageSplits:
  del data_dir
  from sklearn.datasets import load_digits  # ships its data: no download

  digits = load_digits()
  x = (digits.images.astype(np.float32) / 8.0 - 1.0)[..., None]  # 0..16 -> [-1, 1]
  y = digits.target.astype(np.int32)
  train, test = stratified_split(y, DIGITS_TEST_FRACTION, seed)
  return ImageSplits(np.ascontiguousarray(x[train]), y[train], np.ascontiguousarray(x[test]), y[test],
                     10, "digits")


# -- CIFAR (tensorflow-datasets) -----------------------------------------------------------------------------


def prepare_command(name: str, data_dir: str | None = None) -> str:
  """The shell command that prepares the tfds data set ``name`` in the format ``tfds.data_source`` reads."""
  command = f"tfds build {name} --file_format=array_record"
  if data_dir is not None:
    command += f" --data_dir={data_dir}"
  return command


def _import_tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:  # pragma: no cover - tfds is a dependency of scl's image extra
    raise ImportError("CIFAR data sets need tensorflow-datasets: pip install 'tensorflow-datasets>=4.9'") from e
  return tfds


def _not_prepared(tfds, name: str, data_dir: str | None, error: Exception) -> Exception | None:
  """A clear error when ``name`` is missing or prepared in a format ``data_source`` cannot read; None when
  the data set looks prepared (then the original error stands)."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    prepared = builder.is_prepared()
  except Exception:  # noqa: BLE001 - any failure to even find the builder means: not prepared here
    builder, prepared = None, False
  where = builder.data_dir if builder is not None else (data_dir or "tfds' default data_dir")
  building = ("(building needs TensorFlow once: pip install tensorflow; reading does not). Python: "
              f"tfds.builder({name!r}, file_format='array_record'"
              + (f", data_dir={data_dir!r}" if data_dir is not None else "")
              + ").download_and_prepare()")
  if not prepared:
    return FileNotFoundError(
        f"image data set {name!r} is not prepared in {where}. Prepare it once with `"
        f"{prepare_command(name, data_dir)}` {building}.")
  file_format = getattr(builder.info, "file_format", None)
  if file_format is not None and getattr(file_format, "value", str(file_format)) not in ("array_record",
                                                                                         "parquet"):
    return ValueError(
        f"image data set {name!r} is prepared in {where} in the {getattr(file_format, 'value', file_format)} "
        "format, which tfds.data_source cannot read; rebuild it with `"
        f"{prepare_command(name, data_dir)}` into another data_dir (or delete it first), or convert it with "
        f"`tfds convert_format --dataset_dir={where} --out_file_format=array_record` ({error})")
  return None


def read_tfds_split(name: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """A whole tfds split as ``(images uint8 [N, H, W, C], labels int32 [N])``, read in batches.

  Records are fetched with the data source's batched ``__getitems__`` (``READ_CHUNK`` at a time); a source
  without a working one (tfds' own ``mock_data`` mock in tfds 4.9.x) is read record by record.
  """
  tfds = _import_tfds()
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # noqa: BLE001 - translated below when the set is simply not prepared
    clear = _not_prepared(tfds, name, data_dir, e)
    if clear is None:
      raise
    raise clear from e
  n = len(source)
  if n == 0:
    raise ValueError(f"image data set {name!r}: split {split!r} in {data_dir or 'the default data_dir'} is empty")
  batched = getattr(source, "__getitems__", None)
  first = None
  if batched is not None:
    try:
      first = batched(list(range(min(READ_CHUNK, n))))
    except TypeError:
      batched = None
  if first is None:
    first = [source[i] for i in range(min(READ_CHUNK, n))]
  image0 = np.asarray(first[0]["image"])
  images = np.empty((n, *image0.shape), np.uint8)
  labels = np.empty((n,), np.int32)

  def put(start: int, records: list[Any]) -> None:
    for j, record in enumerate(records):
      images[start + j] = record["image"]
      labels[start + j] = record["label"]

  put(0, first)
  for start in range(len(first), n, READ_CHUNK):
    keys = list(range(start, min(start + READ_CHUNK, n)))
    put(start, batched(keys) if batched is not None else [source[i] for i in keys])
  return images, labels


def _to_unit_range(images: np.ndarray) -> np.ndarray:
  """uint8 ``[0, 255]`` -> float32 ``[-1, 1]`` (one float32 array, no float64 temporaries)."""
  out = images.astype(np.float32)
  out *= np.float32(1 / 127.5)
  out -= np.float32(1)
  return out


def _tfds_loader(name: str, num_classes: int) -> Callable[[str | None, int], ImageSplits]:
  def load_tfds(data_dir: str | None, seed: int) -> ImageSplits:
    del seed  # the splits are the data set's own
    parts = []
    for split in ("train", "test"):
      images, labels = read_tfds_split(name, split, data_dir)
      if images.ndim != 4 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"image data set {name!r} ({split}): expected images [N, H, W, C] and labels in "
                         f"[0, {num_classes}); got {list(images.shape)} and labels in "
                         f"[{labels.min()}, {labels.max()}]")
      parts += [_to_unit_range(images), labels]
    return ImageSplits(*parts, num_classes, name)

  load_tfds.__name__ = f"load_{name}"
  return load_tfds


IMAGE_SETS.register("cifar10", _tfds_loader("cifar10", 10), seeded=False)
IMAGE_SETS.register("cifar100", _tfds_loader("cifar100", 100), seeded=False)
