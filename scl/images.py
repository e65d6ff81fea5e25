"""Image data sets and classifier rewards, registered: the papers' headline experiments.

* Data sets (:data:`scl.registry.DATASETS`): ``"digits"`` (scikit-learn's 8×8 handwritten digits, shipped
  with the package: the offline default), ``"cifar10"`` and ``"cifar100"`` (read with ``tfds.data_source``
  from data a user prepared once, see BUILD.md). The real data ``p_data`` is the whole training split; a
  classifier trained by scl on it (:mod:`scl.classifier`, cached on disk) defines the rewards and the image
  metrics, and its weights are arguments of the compiled loop like every other array.
* Rewards (:data:`scl.registry.REWARDS`), both computed by the classifier inside the jitted step:
  ``"class_prob"`` — ``γ · P(class c | x)`` (Ferbach et al.; ``gamma=5``, ``target_class=0``);
  ``"class_index"`` — ``10 − 10 · ĉ(x) / C`` with ``ĉ`` the predicted class among ``C``, rounded down to an
  integer: ``10 − class`` on 10 classes (Wei & Zhang's evaluation reward, class 0 most preferred); on
  CIFAR-100 the 100 fine classes fall into 10 consecutive blocks of 10 (``10 − ⌊class / 10⌋``), so rewards
  span the same 1..10 range.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from scl import classifier as classifier_lib
from scl import image_data
from scl import registry
from scl import rewards as rewards_lib
from scl import task as task_lib


def _image_dataset(cfg) -> task_lib.Dataset:
  splits = image_data.load(cfg.data.name, data_dir=cfg.data.data_dir, seed=cfg.data.data_seed)
  clf, params, _ = classifier_lib.get(splits, cfg.data.classifier)
  n = splits.train_x.shape[0]
  return task_lib.Dataset(real=(splits.train_x, np.full((n,), 1.0 / n, np.float32)), classifier=(clf, params))


def _check_image_config(cfg) -> None:
  """Image data sets: a model off a finite support and a registered classifier architecture."""
  if registry.MODELS.meta(cfg.model.name, "finite_support", False):
    raise ValueError(f"invalid config: model={cfg.model.name!r}: data set {cfg.data.name!r} has no finite "
                     "support to put it on")
  if cfg.data.classifier not in classifier_lib.ARCHITECTURES:
    raise ValueError(f"invalid config: classifier={cfg.data.classifier!r}: choose one of "
                     f"{classifier_lib.ARCHITECTURES.names()}")


for _name, _classes in (("digits", 10), ("cifar10", 10), ("cifar100", 100)):
  registry.DATASETS.register(_name, _image_dataset, images=True, num_classes=_classes,
                             validate=_check_image_config)


def _check_classifier_reward(cfg) -> None:
  """Classifier rewards need an image data set, and ``target_class`` one of its classes."""
  if not registry.DATASETS.meta(cfg.data.name, "images", False):
    raise ValueError(f"invalid config: reward={cfg.reward.name!r}: needs an image data set with a classifier; "
                     f"dataset={cfg.data.name!r} has none")
  classes = registry.DATASETS.meta(cfg.data.name, "num_classes", None)
  if classes is not None and not 0 <= cfg.reward.target_class < classes:
    raise ValueError(f"invalid config: target_class={cfg.reward.target_class!r}: must lie in [0, {classes - 1}]")


def _classifier_of(cfg, dataset):
  if dataset.classifier is None:
    raise ValueError(f"invalid config: reward={cfg.reward.name!r}: needs an image data set with a classifier; "
                     f"{cfg.data.name!r} has none")
  return dataset.classifier


@registry.REWARDS.register("class_prob", validate=_check_classifier_reward)
def class_prob(cfg, dataset) -> rewards_lib.Reward:
  """``γ · P(class c | x)`` under the data set's classifier (``gamma``, ``target_class``)."""
  clf, params = _classifier_of(cfg, dataset)
  if not 0 <= cfg.reward.target_class < clf.num_classes:
    raise ValueError(f"invalid config: target_class={cfg.reward.target_class!r}: must lie in "
                     f"[0, {clf.num_classes - 1}]")
  apply = clf.apply

  def reward(p, x):
    logits, _ = apply(p["classifier"], x)
    return p["gamma"] * jnp.take(jax.nn.softmax(logits, -1), p["target"], axis=-1)

  return rewards_lib.Reward({"classifier": params, "gamma": jnp.float32(cfg.reward.gamma),
                             "target": jnp.int32(cfg.reward.target_class)}, reward)


@registry.REWARDS.register("class_index", validate=_check_classifier_reward)
def class_index(cfg, dataset) -> rewards_lib.Reward:
  """``10 − ⌊10 ĉ(x) / C⌋``, ``ĉ`` the classifier's predicted class of ``C`` (``10 − class`` for C = 10)."""
  clf, params = _classifier_of(cfg, dataset)
  apply, C = clf.apply, clf.num_classes

  def reward(p, x):
    logits, _ = apply(p, x)
    return 10.0 - jnp.floor(10.0 * jnp.argmax(logits, -1) / C)

  return rewards_lib.Reward(params, reward)
