"""scl.image_data: digits offline; CIFAR-10/100 through tfds.data_source, with tfds' mock and with real
(tiny, hand-written) ArrayRecord files — neither needs TensorFlow."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from scl import image_data


@pytest.fixture
def tfds():
  """tensorflow-datasets (the `test` and `images` extras); only the CIFAR tests need it."""
  return pytest.importorskip("tensorflow_datasets")


@pytest.fixture(autouse=True)
def _fresh_cache():
  """Mocked loads must not stay in (or come from) load's in-memory cache."""
  image_data.clear_cache()
  yield
  image_data.clear_cache()


def _check_images(x, y, n, shape, num_classes):
  assert x.shape == (n, *shape) and x.dtype == np.float32
  assert y.shape == (n,) and y.dtype == np.int32
  assert x.min() >= -1.0 and x.max() <= 1.0
  assert y.min() >= 0 and y.max() < num_classes


def test_digits_shapes_range_and_stratified_split():
  s = image_data.load("digits")
  assert s.name == "digits" and s.num_classes == 10
  n_train, n_test = len(s.train_y), len(s.test_y)
  assert n_train + n_test == 1797 and n_test == pytest.approx(0.2 * 1797, abs=10)
  _check_images(s.train_x, s.train_y, n_train, (8, 8, 1), 10)
  _check_images(s.test_x, s.test_y, n_test, (8, 8, 1), 10)
  # The pixel values 0..16 fill [-1, 1]: both ends are reached.
  assert s.train_x.min() == -1.0 and s.train_x.max() == 1.0
  # Stratified: every class holds out 20% of its images (up to rounding).
  all_y = np.concatenate([s.train_y, s.test_y])
  np.testing.assert_allclose(np.bincount(s.test_y, minlength=10), 0.2 * np.bincount(all_y, minlength=10),
                             atol=0.5)
  # The split is a partition of the 1,797 images.
  from sklearn.datasets import load_digits
  train, test = image_data.stratified_split(load_digits().target, image_data.DIGITS_TEST_FRACTION, 0)
  assert not set(train) & set(test) and len(set(train) | set(test)) == 1797


def test_digits_split_is_seeded_and_cached():
  a, b, c = image_data.load("digits"), image_data.load("digits", seed=0), image_data.load("digits", seed=1)
  assert a is b  # cached
  assert not np.array_equal(a.test_y, c.test_y) or not np.array_equal(a.test_x, c.test_x)
  image_data.clear_cache()
  np.testing.assert_array_equal(image_data.load("digits").test_x, a.test_x)  # deterministic
  with pytest.raises(ValueError, match="read-only"):
    a.train_x[0, 0, 0, 0] = 0.0


def test_unknown_name_lists_choices():
  with pytest.raises(ValueError, match=r"digits.*cifar10.*cifar100"):
    image_data.load("mnist")


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_through_tfds_mock(name, num_classes, tmp_path, tfds):
  # MockPolicy.USE_CODE: the builder's code gives the features; no metadata files and no TensorFlow. Its
  # mocked source has a broken __getitems__ (tfds 4.9.x), so load reads it record by record.
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    s = image_data.load(name, data_dir=str(tmp_path))
  assert s.name == name and s.num_classes == num_classes
  _check_images(s.train_x, s.train_y, 12, (32, 32, 3), num_classes)
  _check_images(s.test_x, s.test_y, 12, (32, 32, 3), num_classes)
  # The mock draws uint8 pixels: x = u / 127.5 - 1 exactly.
  u = (s.train_x + 1.0) * 127.5
  np.testing.assert_allclose(u, np.round(u), atol=1e-3)
  assert u.min() >= 0 and u.max() <= 255 and u.max() > 128  # spread over the range, not all zeros


def _write_prepared(tfds, name: str, data_dir: str, images: dict, labels: dict) -> None:
  """A prepared tfds data set in ArrayRecord format, written without TensorFlow: tf.train.Example protos
  (tfds' own copy) holding PNG images, plus the builder's dataset_info.json / features.json."""
  from array_record.python import array_record_module
  from PIL import Image
  from tensorflow_datasets.proto import tf_example_pb2, tf_feature_pb2

  def feature(**kw):
    return tf_feature_pb2.Feature(**kw)

  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  os.makedirs(builder.data_dir, exist_ok=True)
  splits = []
  for split in images:
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        dataset_name=name, split=split, filetype_suffix="array_record")
    writer = array_record_module.ArrayRecordWriter(os.fspath(template.sharded_filepaths(1)[0]), "group_size:1")
    for i, (img, label) in enumerate(zip(images[split], labels[split])):
      png = io.BytesIO()
      Image.fromarray(img).save(png, format="PNG")
      fields = {"image": feature(bytes_list=tf_feature_pb2.BytesList(value=[png.getvalue()])),
                "label": feature(int64_list=tf_feature_pb2.Int64List(value=[int(label)])),
                "id": feature(bytes_list=tf_feature_pb2.BytesList(value=[b"%s_%05d" % (split.encode(), i)]))}
      if name == "cifar100":
        fields["coarse_label"] = feature(int64_list=tf_feature_pb2.Int64List(value=[int(label) // 5]))
      writer.write(tf_example_pb2.Example(features=tf_feature_pb2.Features(feature=fields)).SerializeToString())
    writer.close()
    splits.append(tfds.core.SplitInfo(name=split, shard_lengths=[len(labels[split])], num_bytes=0,
                                      filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(splits))
  builder.info.write_to_directory(builder.data_dir)


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_from_prepared_array_record_files(name, num_classes, tmp_path, monkeypatch, tfds):
  pytest.importorskip("array_record")  # tfds installs it on Linux only
  # Real files read by the real (unmocked) data source, in several batched reads.
  monkeypatch.setattr(image_data, "READ_CHUNK", 7)
  rng = np.random.default_rng(0)
  images = {s: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for s, n in [("train", 20), ("test", 9)]}
  images["train"][0] = 0
  images["train"][1] = 255
  labels = {s: rng.integers(0, num_classes, len(images[s])) for s in images}
  _write_prepared(tfds, name, str(tmp_path), images, labels)
  from tensorflow_datasets.core.data_sources import array_record
  calls = []
  batched = array_record.ArrayRecordDataSource.__getitems__

  def spy(self, keys):
    calls.append(len(keys))
    return batched(self, keys)

  monkeypatch.setattr(array_record.ArrayRecordDataSource, "__getitems__", spy)
  s = image_data.load(name, data_dir=str(tmp_path))
  assert calls == [7, 7, 6, 7, 2]  # train 20 = 7 + 7 + 6, test 9 = 7 + 2: batched reads only
  for split in ("train", "test"):
    x, y = getattr(s, split + "_x"), getattr(s, split + "_y")
    _check_images(x, y, len(labels[split]), (32, 32, 3), num_classes)
    np.testing.assert_array_equal(y, labels[split])
    np.testing.assert_allclose(x, images[split] / 127.5 - 1.0, atol=1e-6)
  assert s.train_x[0].min() == -1.0 and s.train_x[1].max() == 1.0
  assert image_data.load(name, data_dir=str(tmp_path), seed=3) is s  # the split ignores seed: one cache entry


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_missing_cifar_fails_fast_with_the_prepare_command(name, tmp_path, tfds):
  with pytest.raises(FileNotFoundError) as err:
    image_data.load(name, data_dir=str(tmp_path))
  message = str(err.value)
  assert name in message
  assert f"tfds build {name} --file_format=array_record --data_dir={tmp_path}" in message


def _splits(train_y=(0, 1, 2), num_classes=3, train_x=None):
  x = np.zeros((3, 2, 2, 1), np.float32) if train_x is None else train_x
  return image_data.ImageSplits(x, np.asarray(train_y, np.int32), np.zeros((2, 2, 2, 1), np.float32),
                                np.asarray([0, 1], np.int32), num_classes, "mine")


@pytest.mark.parametrize("splits, message", [
    (dict(train_y=(0, 1, 3)), r"\(train\): labels must lie in \[0, 3\); got labels in \[0, 3\]"),  # NaN loss
    (dict(train_y=(-5, 1, 2)), r"labels in \[-5, 2\]"),                        # a wrong class, silently
    (dict(num_classes=1), "num_classes=1 must be an integer >= 2"),
    (dict(train_y=(), train_x=np.zeros((0, 2, 2, 1), np.float32)), "the train split has no images"),
    (dict(train_x=np.full((3, 2, 2, 1), np.nan, np.float32)), r"\(train\): 12 non-finite pixel values"),
])
def test_a_registered_image_set_with_bad_labels_or_pixels_is_refused(splits, message):
  """What load() checks of any registered set (not only of the tfds loader's): labels a classifier can be
  trained on, at least one image per split, finite pixels."""
  image_data._check_splits("mine", _splits())  # the valid baseline passes
  with pytest.raises(ValueError, match=message):
    image_data._check_splits("mine", _splits(**splits))
