"""Small image classifiers (flax linen) trained on an :class:`~scl.image_data.ImageSplits`, cached on disk.

The classifier's logits feed the image rewards (``class_prob``, ``class_index``) and the learned reward's
inputs; its penultimate activations ("features") feed the Fréchet distance and precision / recall.

* :func:`make_classifier` — the pure ``apply(params, images) -> (logits, features)`` of an architecture.
* :func:`train` — minibatch Adam (optax) in one jitted ``lax.scan``; the images are arguments of the
  compiled program, never constants in it.
* :func:`get` — :func:`train` once, then reload: the parameters are saved (flax msgpack, written
  atomically) under ``cache_dir`` (default ``$SCL_CACHE/classifiers``, else ``~/.cache/scl/classifiers``) in a
  file named by the data set, architecture, image shape, number of classes, training settings and a digest
  of the training data.

Architectures are registered in :data:`ARCHITECTURES` (``"cnn"``, ``"mlp"``); a new one is a function
``(num_classes) -> flax module`` whose ``__call__(images [n, H, W, C])`` returns ``(logits, features)``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import flax.serialization
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from scl import files
from scl.image_data import ImageSplits
from scl.registry import Registry

#: Bump when an architecture or the training procedure changes: old cache files then stop matching.
CACHE_VERSION = 1

#: Default training settings of :func:`train` (and of :func:`get`).
DEFAULT_TRAIN = {"steps": 1000, "batch_size": 128, "lr": 1e-3, "seed": 0}

#: Images per compiled evaluation call in :func:`accuracy` / :func:`predict`.
EVAL_BATCH = 1024

#: Penultimate width (the feature dimension) of the built-in architectures.
FEATURE_DIM = 128


class Classifier(NamedTuple):
  """An image classifier: a pure function of its parameters.

  Attributes:
    apply: ``(params, images [n, H, W, C]) -> (logits [n, num_classes], features [n, feature_dim])``; pure
      and jittable. Flat images ``[n, H*W*C]`` are reshaped to the classifier's image shape.
    num_classes: the number of classes.
    feature_dim: the width of the penultimate features.
    arch: the architecture's registered name.
  """

  apply: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]
  num_classes: int
  feature_dim: int
  arch: str


#: name -> ``(num_classes) -> flax module`` returning ``(logits, features)``.
ARCHITECTURES = Registry("classifier architecture", "arch", "(num_classes: int) -> flax.linen.Module")


class PatchConv(nn.Module):
  """A 3×3 "same" convolution as one matrix product over the 9 shifted copies of the input (im2col).

  Same parameters as ``nn.Conv(features, (3, 3))``. XLA:CPU runs ``lax.conv`` inside a loop body (the
  training ``lax.scan``) an order of magnitude slower than outside it (jax-ml/jax#12868: 240 ms against
  8 ms per digits step here); slices and a matmul do not have that problem, on any backend.
  """

  features: int

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, c, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate([padded[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=-1)
    return patches @ kernel.reshape(9 * c, self.features) + bias


def max_pool2(x):
  """2×2 max-pooling with stride 2 (an odd last row / column is dropped), as a reshape and a max."""
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class CNN(nn.Module):
  """conv 3×3×32 -> max-pool 2 -> conv 3×3×64 -> max-pool 2 -> dense 128 (features) -> dense classes."""

  num_classes: int
  feature_dim: int = FEATURE_DIM

  @nn.compact
  def __call__(self, x):
    x = max_pool2(nn.relu(PatchConv(32)(x)))
    x = max_pool2(nn.relu(PatchConv(64)(x)))
    features = nn.relu(nn.Dense(self.feature_dim)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes)(features), features


class MLP(nn.Module):
  """flatten -> dense 256 -> dense 128 (features) -> dense classes."""

  num_classes: int
  feature_dim: int = FEATURE_DIM

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(256)(x.reshape(x.shape[0], -1)))
    features = nn.relu(nn.Dense(self.feature_dim)(x))
    return nn.Dense(self.num_classes)(features), features


ARCHITECTURES.register("cnn", CNN)
ARCHITECTURES.register("mlp", MLP)


# -- building ------------------------------------------------------------------------------------------------


def make_classifier(arch: str, image_shape: tuple[int, int, int], num_classes: int) -> Classifier:
  """The classifier ``arch`` for images of ``image_shape`` (H, W, C) and ``num_classes`` classes.

  The same arguments give the same :class:`Classifier` (the same ``apply`` object), so a jitted program
  that closes over it is compiled once.
  """
  ARCHITECTURES.check(arch)
  image_shape = tuple(int(d) for d in image_shape)
  if len(image_shape) != 3 or min(image_shape) < 1:
    raise ValueError(f"image_shape must be (H, W, C) with positive sizes, got {image_shape}")
  if int(num_classes) < 2:
    raise ValueError(f"num_classes must be at least 2, got {num_classes}")
  return _make_classifier(arch, image_shape, int(num_classes))


@functools.lru_cache(maxsize=None)
def _make_classifier(arch: str, image_shape: tuple[int, int, int], num_classes: int) -> Classifier:
  module = ARCHITECTURES[arch](num_classes)
  size = int(np.prod(image_shape))

  def apply(params, images):
    images = jnp.asarray(images)
    if images.ndim == 2 and images.shape[1] == size:
      images = images.reshape(images.shape[0], *image_shape)
    if images.shape[1:] != image_shape:
      raise ValueError(f"{arch} classifier expects images [n, {', '.join(map(str, image_shape))}] (or flat "
                       f"[n, {size}]), got {list(images.shape)}")
    return module.apply({"params": params}, images)

  images = jnp.zeros((1, *image_shape), jnp.float32)
  _, features = jax.eval_shape(lambda: module.apply(module.init(jax.random.PRNGKey(0), images), images))
  apply.__name__ = f"{arch}_apply"
  clf = Classifier(apply, num_classes, int(features.shape[-1]), arch)
  _INIT[clf.apply] = (module, image_shape)
  return clf


#: apply -> (flax module, image shape), for :func:`init_params`.
_INIT: dict[Callable, tuple[nn.Module, tuple[int, int, int]]] = {}


def init_params(classifier: Classifier, key: jax.Array) -> Any:
  """Random parameters of ``classifier`` (a :func:`make_classifier` result)."""
  module, image_shape = _INIT[classifier.apply]
  return module.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]


def _param_shapes(classifier: Classifier) -> Any:
  return jax.eval_shape(lambda: init_params(classifier, jax.random.PRNGKey(0)))


# -- training and evaluation ---------------------------------------------------------------------------------


def _loss(apply, params, x, y):
  logits, _ = apply(params, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _fit(apply, steps: int, batch_size: int, params, x, y, lr, key):
  """``steps`` Adam steps on minibatches drawn uniformly (with replacement) from ``(x, y)``, learning rate
  ``lr`` decayed by a cosine to 0; returns the parameters and the per-step losses."""
  decay = optax.cosine_decay_schedule(1.0, steps)
  tx = optax.adam(lambda count: lr * decay(count))  # lr is traced: a new value does not recompile
  opt_state = tx.init(params)

  def step(carry, k):
    p, s = carry
    idx = jax.random.randint(k, (batch_size,), 0, x.shape[0])
    loss, grads = jax.value_and_grad(_loss, argnums=1)(apply, p, x[idx], y[idx])
    updates, s = tx.update(grads, s, p)
    p = optax.apply_updates(p, updates)
    return (p, s), loss

  (params, _), losses = jax.lax.scan(step, (params, opt_state), jax.random.split(key, steps))
  return params, losses


@functools.partial(jax.jit, static_argnums=0)
def _predict_batch(apply, params, x):
  return jnp.argmax(apply(params, x)[0], axis=-1)


def predict(classifier: Classifier, params: Any, images: np.ndarray, *, batch_size: int = EVAL_BATCH
            ) -> np.ndarray:
  """Predicted classes ``[n]`` of ``images``, evaluated ``batch_size`` at a time (one compiled shape)."""
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"predict: batch_size={batch_size!r} must be an integer >= 1")
  images = np.asarray(images, np.float32)
  n = images.shape[0]
  out = np.empty((n,), np.int32)
  if n == 0:
    return out
  b = min(batch_size, n)
  for start in range(0, n, b):
    chunk = images[start:start + b]
    m = chunk.shape[0]
    if m < b:  # pad the last chunk to the compiled shape
      chunk = np.concatenate([chunk, np.zeros((b - m, *chunk.shape[1:]), np.float32)])
    out[start:start + m] = np.asarray(_predict_batch(classifier.apply, params, chunk))[:m]
  return out


def accuracy(classifier: Classifier, params: Any, images: np.ndarray, labels: np.ndarray, *,
             batch_size: int = EVAL_BATCH) -> float:
  """Fraction of ``images`` whose predicted class is ``labels`` (at least one image, as many labels)."""
  labels = np.asarray(labels)
  if len(images) == 0 or labels.shape != (len(images),):
    raise ValueError(f"accuracy: needs at least one image and a label for each, labels of shape [n]; got "
                     f"{len(images)} images and labels of shape {labels.shape}")
  return float(np.mean(predict(classifier, params, images, batch_size=batch_size) == labels))


def _settings(train_kwargs: dict[str, Any]) -> dict[str, Any]:
  unknown = set(train_kwargs) - set(DEFAULT_TRAIN)
  if unknown:
    raise TypeError(f"unknown training settings {sorted(unknown)}; choose among {sorted(DEFAULT_TRAIN)}")
  s = {**DEFAULT_TRAIN, **train_kwargs}
  s = {"steps": int(s["steps"]), "batch_size": int(s["batch_size"]), "lr": float(s["lr"]), "seed": int(s["seed"])}
  if s["steps"] < 1 or s["batch_size"] < 1 or not s["lr"] > 0:
    raise ValueError(f"training settings need steps >= 1, batch_size >= 1 and lr > 0; got {s}")
  return s


def train(splits: ImageSplits, arch: str = "cnn", *, steps: int = DEFAULT_TRAIN["steps"],
          batch_size: int = DEFAULT_TRAIN["batch_size"], lr: float = DEFAULT_TRAIN["lr"],
          seed: int = DEFAULT_TRAIN["seed"]) -> tuple[Any, dict[str, Any]]:
  """Train the classifier ``arch`` on ``splits.train_*``; return ``(params, info)``.

  Minibatch Adam (cosine-decayed learning rate from ``lr``) with cross-entropy, ``steps`` steps of
  ``batch_size`` images drawn with replacement, all in one compiled ``lax.scan`` that takes the images as
  arguments.

  ``info``: ``test_accuracy`` (on ``splits.test_*``, against the labels), ``final_loss`` (mean training loss
  over the last 10% of steps), ``train_seconds`` (wall time of compiling and training), ``compile_seconds``
  (its compile part), ``eval_seconds``, and the settings.
  """
  s = _settings({"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed})
  clf = make_classifier(arch, splits.train_x.shape[1:], splits.num_classes)
  init_key, fit_key = jax.random.split(jax.random.PRNGKey(s["seed"]))
  t0 = time.perf_counter()
  params = init_params(clf, init_key)
  x = jnp.asarray(splits.train_x)
  y = jnp.asarray(splits.train_y)
  lr_arr = jnp.float32(s["lr"])
  compiled = _fit.lower(clf.apply, s["steps"], s["batch_size"], params, x, y, lr_arr, fit_key).compile()
  t1 = time.perf_counter()
  params, losses = compiled(params, x, y, lr_arr, fit_key)
  params = jax.block_until_ready(params)
  t2 = time.perf_counter()
  test_accuracy = accuracy(clf, params, splits.test_x, splits.test_y)
  t3 = time.perf_counter()
  losses = np.asarray(losses)
  info = {"test_accuracy": test_accuracy,
          "final_loss": float(losses[-max(1, len(losses) // 10):].mean()),
          "train_seconds": t2 - t0, "compile_seconds": t1 - t0, "eval_seconds": t3 - t2,
          "arch": arch, "dataset": splits.name, **s}
  return params, info


# -- the on-disk cache ---------------------------------------------------------------------------------------


def default_cache_dir() -> str:
  """``$SCL_CACHE/classifiers`` if ``SCL_CACHE`` is set, else ``~/.cache/scl/classifiers``."""
  root = os.environ.get("SCL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "scl")
  return os.path.join(root, "classifiers")


def data_digest(splits: ImageSplits) -> str:
  """A digest (hex) of the training images and labels, their shapes and dtypes."""
  h = hashlib.blake2b(digest_size=16)
  for a in (splits.train_x, splits.train_y):
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
  return h.hexdigest()


def cache_path(splits: ImageSplits, arch: str, cache_dir: str | None = None, **train_kwargs) -> str:
  """The file :func:`get` uses for these data, architecture and training settings."""
  s = _settings(train_kwargs)
  shape = "x".join(str(d) for d in splits.train_x.shape[1:])
  key = hashlib.blake2b(digest_size=8)
  key.update(repr((CACHE_VERSION, arch, shape, splits.num_classes, sorted(s.items()),
                   data_digest(splits))).encode())
  name = (f"{splits.name}_{arch}_{shape}_{splits.num_classes}c_steps{s['steps']}_bs{s['batch_size']}_"
          f"lr{s['lr']:g}_seed{s['seed']}_{key.hexdigest()}.msgpack")
  return os.path.join(os.path.expanduser(cache_dir or default_cache_dir()), name)


def _restore(path: str, classifier: Classifier) -> Any:
  """The parameters saved at ``path``, checked against ``classifier``'s structure, shapes and dtypes."""
  advice = f"delete {path} to retrain the classifier"
  try:
    with open(path, "rb") as f:
      state = flax.serialization.msgpack_restore(f.read())
  except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
    raise ValueError(f"classifier cache file {path} is unreadable ({type(e).__name__}: {e}); {advice}") from e
  if not isinstance(state, dict):
    raise ValueError(f"classifier cache file {path} does not hold a parameter dict; {advice}")
  want = flax.traverse_util.flatten_dict(_param_shapes(classifier))
  got = flax.traverse_util.flatten_dict(state)
  if set(want) != set(got):
    missing = sorted("/".join(k) for k in set(want) - set(got))[:4]
    extra = sorted("/".join(map(str, k)) for k in set(got) - set(want))[:4]
    raise ValueError(f"classifier cache file {path} does not match the {classifier.arch} classifier "
                     f"(missing {missing}, unexpected {extra}); {advice}")
  for k, spec in want.items():
    a = got[k]
    if not isinstance(a, np.ndarray) or a.shape != spec.shape or a.dtype != spec.dtype:
      found = f"{a.dtype}{list(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__
      raise ValueError(f"classifier cache file {path} does not match the {classifier.arch} classifier: "
                       f"{'/'.join(k)} is {found}, expected {spec.dtype}{list(spec.shape)}; {advice}")
  return jax.tree.map(jnp.asarray, flax.traverse_util.unflatten_dict(got))


def get(splits: ImageSplits, arch: str = "cnn", *, cache_dir: str | None = None, **train_kwargs
        ) -> tuple[Classifier, Any, dict[str, Any]]:
  """The classifier ``arch`` trained on ``splits``: loaded from the cache, or trained and saved.

  ``train_kwargs`` are :func:`train`'s settings (``steps``, ``batch_size``, ``lr``, ``seed``). Returns
  ``(classifier, params, info)``; ``info`` has ``test_accuracy`` (recomputed on ``splits.test_*`` when
  loaded too), ``path`` (the cache file), ``loaded`` (True when read from the cache; then ``train_seconds``
  is 0 and ``load_seconds`` the time to read it) and :func:`train`'s entries when trained.

  Raises:
    ValueError: the cache file exists but is unreadable or does not match (the message names it and says
      to delete it).
  """
  s = _settings(train_kwargs)
  clf = make_classifier(arch, splits.train_x.shape[1:], splits.num_classes)
  path = cache_path(splits, arch, cache_dir, **s)
  if os.path.exists(path):
    t0 = time.perf_counter()
    params = _restore(path, clf)
    t1 = time.perf_counter()
    info = {"test_accuracy": accuracy(clf, params, splits.test_x, splits.test_y), "loaded": True,
            "load_seconds": t1 - t0, "train_seconds": 0.0, "arch": arch, "dataset": splits.name, **s}
  else:
    params, info = train(splits, arch, **s)
    state = jax.tree.map(np.asarray, flax.serialization.to_state_dict(params))
    files.write_bytes(path, flax.serialization.msgpack_serialize(state))
    info["loaded"] = False
  info["path"] = path
  return clf, params, info
