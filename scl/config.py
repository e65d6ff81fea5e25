"""The configuration of a run: static settings grouped by component, and the traced hyper-parameters.

A :class:`Config` has one group per component it configures — :class:`DataConfig`, :class:`RewardConfig`,
:class:`ModelConfig`, :class:`CurationConfig`, :class:`PlatformConfig` — plus ``iterations`` and the traced
hyper-parameter values ``hyper`` (a :class:`Hyper`). Static fields fix shapes and program structure and key
the compilation cache; the traced ones (:data:`TRACED`) are passed to the compiled program as arrays, so
sweeping them never recompiles.

Every field has one flat keyword name, unique across the groups, used by :mod:`scl.configs`,
:meth:`Config.replace` and the binaries' ``--config.<name>`` flags::

    cfg = scl.configs.gaussian8(K=4, lam=1.0, model="flow", width=64)
    cfg.model.name, cfg.model.width, cfg.hyper.K      # "flow", 64, 4
    cfg.replace(K=8, attack="gradient", kappa=0.2)

The group's choice of registered component is its ``name`` field, reached by the keywords ``dataset``,
``reward``, ``model`` and ``curation``; ``attack``, ``labels`` and ``defence`` name the platform's.

**Traced hyper-parameters are declared once**, in :data:`scl.hyper.TRACED`: from that table follow the
:class:`~scl.hyper.Hyper` pytree, the validation of values (``scl.run``, ``scl.sweep``) and the axes a sweep
may take.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from scl import registry
from scl.hyper import TRACED_BY_NAME, Hyper, traced_names, validate_traced


# ----------------------------------------------------------------------------------------------------------
# Static settings, one group per component.


#: Seeds (``seed``, ``data_seed``, a sweep's ``seeds``) lie in ``[0, SEED_LIMIT)``: ``jax.random.PRNGKey`` keeps 32
#: bits of a seed without 64-bit mode, so ``2**32`` would be seed 0 again.
SEED_LIMIT = 2**32


def _positive_ints(group, names: Iterable[str]) -> None:
  for name in names:
    value = getattr(group, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"invalid config: {name}={value!r}: must be an integer >= 1")


@dataclasses.dataclass(frozen=True, eq=False)
class _Group:
  """Hashable by value for plain fields and by identity for arrays and functions (they key jit caches)."""

  def _key(self):
    return tuple(_hashable(getattr(self, f.name)) for f in dataclasses.fields(self))

  def __hash__(self):
    return hash(self._key())

  def __eq__(self, other):
    return type(other) is type(self) and self._key() == other._key()


@dataclasses.dataclass(frozen=True, eq=False)
class DataConfig(_Group):
  """The real data ``p_data`` (keyword ``dataset`` for ``name``; a :data:`scl.registry.DATASETS` entry).

  Attributes:
    name: ``"gaussian8"``, ``"two_moons"``, ``"points"`` (a finite point set) or a registered data set.
    n_real: size of the fixed real data set (on a finite support ``p_data`` is exact and this is unused).
    n_eval: model samples used for the sample-based metrics.
    data_seed: seed of the real data set and of a discretised support.
    n_atoms: atoms of the support a continuous data set is discretised to for a finite-support model.
    points, point_weights: ``[n, d]`` support and ``[n]`` ``p_data`` of ``dataset="points"``.
    ring_radius, ring_std, n_modes, ring_scale: the Gaussian ring (``ring_scale`` divides the data, as the
      second paper's code does with its standard deviation, about 1.414).
    moons_noise: noise of two-moons.
    data_dir: where tensorflow-datasets keeps prepared data (CIFAR-10/100; None: its default).
    classifier: the architecture of the classifier scl trains on an image data set (:mod:`scl.classifier`).
  """

  name: str = "gaussian8"
  n_real: int = 25_000
  n_eval: int = 10_000
  data_seed: int = 0
  n_atoms: int = 1024
  points: Any = None
  point_weights: Any = None
  ring_radius: float = 2.0
  ring_std: float = 0.02
  n_modes: int = 8
  ring_scale: float = 1.0
  moons_noise: float = 0.05
  data_dir: str | None = None
  classifier: str = "cnn"

  def validate(self) -> None:
    """Raise ``ValueError`` naming the field and value of an invalid setting of this group."""
    _positive_ints(self, ("n_real", "n_eval", "n_atoms", "n_modes"))
    for name, positive in (("ring_radius", True), ("ring_scale", True), ("ring_std", False),
                           ("moons_noise", False)):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"invalid config: {name}={value!r}: must be a finite number "
                         f"{'> 0' if positive else '>= 0'}")
    if isinstance(self.data_seed, bool) or not isinstance(self.data_seed, int) or not 0 <= self.data_seed < SEED_LIMIT:
      raise ValueError(f"invalid config: data_seed={self.data_seed!r}: must be an integer in [0, 2**32)")


@dataclasses.dataclass(frozen=True, eq=False)
class RewardConfig(_Group):
  """The users' reward ``r`` and the malicious users' reward ``r~`` (keyword ``reward`` for ``name``).

  Attributes:
    name: ``"clipped_distance"`` (``-gamma * max(|x - x*| - r_min, 0)``), ``"custom"`` (``reward_fn``) or a
      registered reward.
    reward_fn: the true reward ``r``, a JAX function ``[n, *event] -> [n]``, for ``reward="custom"``.
    gamma, r_min, x_star: the clipped distance reward; ``x_star`` None is the data set's anchor (mode 0).
    r_tilde_fn: the malicious users' reward ``r~`` (``[n, *event] -> [n]``); None is ``-r``.
    target_class: the class ``c`` of the ``"class_prob"`` reward ``γ · P(c | x)`` (image data sets).
  """

  name: str = "clipped_distance"
  reward_fn: Callable | None = None
  gamma: float = 10.0
  r_min: float = 3.0
  x_star: tuple[float, ...] | None = None
  r_tilde_fn: Callable | None = None
  target_class: int = 0

  def validate(self) -> None:
    """Raise ``ValueError`` naming the field and value of an invalid setting of this group."""
    for name in ("gamma", "r_min"):
      if not isinstance(getattr(self, name), (int, float)) or not np.isfinite(getattr(self, name)):
        raise ValueError(f"invalid config: {name}={getattr(self, name)!r}: must be a finite number")
    if self.r_tilde_fn is not None and not callable(self.r_tilde_fn):
      raise ValueError(f"invalid config: r_tilde_fn={self.r_tilde_fn!r}: must be a function [n, d] -> [n]")
    if self.x_star is not None:
      try:
        point = np.asarray(self.x_star, np.float64)
      except (TypeError, ValueError):
        point = np.full(2, np.nan)
      if point.ndim != 1 or point.size == 0 or not np.all(np.isfinite(point)):
        raise ValueError(f"invalid config: x_star={self.x_star!r}: must be a point, a sequence of finite numbers")


@dataclasses.dataclass(frozen=True, eq=False)
class ModelConfig(_Group):
  """The generative model family (keyword ``model`` for ``name``; a :data:`scl.registry.MODELS` entry).

  Attributes:
    name: ``"categorical"`` (exact maximum likelihood on a finite support), ``"gmm"`` (Gaussian mixture,
      EM), ``"flow"`` (flow matching) or a registered family.
    gmm_components, em_steps: the Gaussian mixture.
    width, depth, train_steps, init_steps, batch_size, sample_steps: the flow-matching network (residual MLP
      of ``depth`` blocks of ``width``), Adam steps per refit and for ``p_0``, minibatch, ODE evaluations.
    velocity: the flow's velocity network: ``"mlp"`` (on flattened samples: 2-D data, 8×8 digits) or
      ``"unet"`` (a small convolutional U-Net for ``[H, W, C]`` images such as CIFAR; ``width`` channels).
  """

  name: str = "gmm"
  gmm_components: int = 8
  em_steps: int = 30
  width: int = 128
  depth: int = 3
  train_steps: int = 1250
  init_steps: int = 3000
  batch_size: int = 1000
  sample_steps: int = 100
  velocity: str = "mlp"

  def validate(self) -> None:
    """Raise ``ValueError`` naming the field and value of an invalid setting of this group."""
    _positive_ints(self, ("gmm_components", "em_steps", "width", "depth", "train_steps", "init_steps",
                          "batch_size", "sample_steps"))
    if self.velocity not in ("mlp", "unet"):
      raise ValueError(f"invalid config: velocity={self.velocity!r}: choose 'mlp' or 'unet'")


@dataclasses.dataclass(frozen=True, eq=False)
class CurationConfig(_Group):
  """How users curate the model's samples (keyword ``curation`` for ``name``).

  Attributes:
    name: ``"choice"`` (Bradley–Terry / Luce choice of one of ``K`` candidates per kept sample), ``"topk"``
      (the ``β`` fraction of the pool with the highest reward), ``"luce_pool"`` (Plackett–Luce sampling
      without replacement of the ``β`` fraction) or a registered rule.
    pool_size: model samples drawn per iteration (the papers' code: 50,000).
    n_keep: kept samples per iteration for ``"choice"`` (the papers' code: 25,000).
    K_max: the largest ``K`` the compiled program accepts (candidates beyond ``K`` are masked).
    fresh_candidates: ``"choice"`` with independent candidates: row ``i`` is ``pool[i K_max:(i+1) K_max]``,
      so ``pool_size`` must equal ``n_keep * K_max``; otherwise candidates are drawn with replacement from
      the pool (K-choice under the pool's empirical measure).
  """

  name: str = "choice"
  pool_size: int = 50_000
  n_keep: int = 25_000
  K_max: int = 16
  fresh_candidates: bool = False

  def validate(self) -> None:
    """Raise ``ValueError`` naming the field and value of an invalid setting of this group."""
    _positive_ints(self, ("pool_size", "n_keep", "K_max"))
    if self.fresh_candidates and self.pool_size != self.n_keep * self.K_max:
      raise ValueError(f"invalid config: pool_size={self.pool_size!r}: fresh_candidates needs pool_size = "
                       f"n_keep * K_max = {self.n_keep * self.K_max}")


@dataclasses.dataclass(frozen=True, eq=False)
class PlatformConfig(_Group):
  """Wei & Zhang's platform: preference pairs, the attacker and the learned reward ``R~``.

  Attributes:
    attack: the label-flip attack (:data:`scl.registry.ATTACKS`: ``"none"``, ``"random"``, ``"dist"``,
      ``"top"``, ``"gradient"``).
    n_pairs: preference pairs drawn from ``p_t`` per iteration.
    labels: ``"deterministic"`` or ``"bradley_terry"`` (:data:`scl.registry.LABELS`).
    learned_reward: curate with the learned reward even without an attack. The platform also runs (and the
      users curate with its learned reward) whenever an attack, a defence, a label mode other than
      ``"deterministic"`` or ``learned_for="malicious"`` is set: each acts only on the platform
      (:attr:`active`).
    reward_hidden: hidden widths of the learned reward MLP (``(64,)``: the papers' 2→64→1 network).
    attack_steps: outer steps of the gradient attack.
    attack_recipe: the gradient attack's recipe (:data:`scl.attacks.RECIPES`): ``"robust"`` (scl's: start
      at the ``dist`` flips, standardised covariance, keep the better of its own and ``dist``'s flips) or
      ``"paper"`` (Wei & Zhang Section 4.1 as written).
    attack_weighting: ``"paper"`` (``J = Cov + α dist``) or ``"code"`` (the public code's ``α Cov +
      (1 − α) dist``).
    reward_input: what the platform's reward model sees: ``"points"`` (the samples), or on image data sets
      the frozen classifier's ``"logits"`` (with ``reward_hidden=()``: the reference's ``Linear(10, 1)``
      head) or penultimate ``"features"``.
    defence: how the platform fits its reward on the (possibly flipped) labels (:data:`scl.registry.DEFENCES`,
      :mod:`scl.defences`): ``"none"`` (plain Bradley–Terry), ``"label_smoothing"``, ``"robust_bt"``,
      ``"outlier"``, ``"ensemble_filter"``, ``"knn_relabel"``; its strength is the traced ``eps`` (ε).
    ensemble_size: reward models of the ``"ensemble_filter"`` defence (bootstrap resamples, vmapped).
    knn_k: neighbours of the ``"knn_relabel"`` defence.
    learned_for: who curates with the learned reward ``R~``. ``"all"``: the platform curates for its users
      with ``R~`` in place of ``r`` (the public code's experiments, where the platform keeps what its learned
      reward ranks highest), and a ``φ`` share of malicious users keeps the fixed ``r~``. ``"malicious"``: the
      design's mixed users, ``p_{t+1} = p_t ((1 - φ) H_K^r + φ H_K^{R~})``: honest users curate with ``r``
      and the ``φ`` share with ``R~`` in place of ``r~`` (at ``φ = 0`` the platform then changes nothing, at
      ``φ = 1`` it is ``"all"`` at ``φ = 0``). With ``"malicious"``, K-choice curation on a finite support
      is the step Wei & Zhang's Lemma 3.3 describes, with ``r~ = R~``, and the theorem monitors apply.
  """

  attack: str = "none"
  n_pairs: int = 2_000
  labels: str = "deterministic"
  learned_reward: bool = False
  reward_hidden: tuple[int, ...] = (64,)
  attack_steps: int = 5
  attack_recipe: str = "robust"
  attack_weighting: str = "paper"
  reward_input: str = "points"
  defence: str = "none"
  ensemble_size: int = 5
  knn_k: int = 10
  learned_for: str = "all"

  @property
  def active(self) -> bool:
    """Whether the users curate through the platform's learned reward: asked for (``learned_reward``), or
    implied by a setting that only the platform reads (an attack, a defence, a label mode): without it such
    a setting would be ignored silently."""
    return (self.attack != "none" or self.learned_reward or self.defence != "none"
            or self.labels != "deterministic" or self.learned_for != "all")

  def validate(self) -> None:
    """Raise ``ValueError`` naming the field and value of an invalid setting of this group."""
    _positive_ints(self, ("n_pairs", "attack_steps", "ensemble_size", "knn_k"))
    if self.learned_for not in ("all", "malicious"):
      raise ValueError(f"invalid config: learned_for={self.learned_for!r}: choose 'all' or 'malicious'")
    if self.reward_input not in ("points", "logits", "features"):
      raise ValueError(f"invalid config: reward_input={self.reward_input!r}: choose 'points', 'logits' or "
                       "'features'")
    if not all(isinstance(w, int) and w >= 1 for w in self.reward_hidden):
      raise ValueError(f"invalid config: reward_hidden={self.reward_hidden!r}: widths must be integers >= 1")


#: group attribute -> (group class, keyword of its ``name`` field or None).
GROUPS: dict[str, tuple[type, str | None]] = {
    "data": (DataConfig, "dataset"), "reward": (RewardConfig, "reward"), "model": (ModelConfig, "model"),
    "curation": (CurationConfig, "curation"), "platform": (PlatformConfig, None),
}


def _flat_index() -> dict[str, tuple[str, str]]:
  """Flat keyword -> (group attribute, field); every keyword is unique."""
  index: dict[str, tuple[str, str]] = {}
  for group, (cls, name_keyword) in GROUPS.items():
    for f in dataclasses.fields(cls):
      keyword = name_keyword if f.name == "name" else f.name
      assert keyword not in index, f"config keyword {keyword!r} is declared twice"
      index[keyword] = (group, f.name)
  return index


FLAT: dict[str, tuple[str, str]] = _flat_index()
_SELECTORS = (("dataset", registry.DATASETS), ("reward", registry.REWARDS), ("model", registry.MODELS),
              ("curation", registry.CURATIONS), ("attack", registry.ATTACKS), ("labels", registry.LABELS),
              ("defence", registry.DEFENCES))


@dataclasses.dataclass(frozen=True, eq=False)
class Config(_Group):
  """Everything that defines a run. Build with :mod:`scl.configs` (``scl.configs.gaussian8(K=4)``).

  Attributes:
    data, reward, model, curation, platform: the static settings of each component (see their classes).
    iterations: retraining iterations ``T``; metrics have ``T + 1`` rows.
    hyper: the traced hyper-parameters (:data:`TRACED`): ``K``, ``lam`` (λ, ``inf`` = fully synthetic),
      ``phi`` (φ), ``kappa`` (κ), ``alpha`` (α), ``beta`` (β), ``lr``, ``l2``, ``eps`` (ε).
  """

  data: DataConfig = DataConfig()
  reward: RewardConfig = RewardConfig()
  model: ModelConfig = ModelConfig()
  curation: CurationConfig = CurationConfig()
  platform: PlatformConfig = PlatformConfig()
  iterations: int = 10
  hyper: Hyper = dataclasses.field(default_factory=Hyper.defaults)

  @classmethod
  def keywords(cls) -> tuple[str, ...]:
    """Every flat keyword: the groups' fields, ``iterations`` and the traced hyper-parameters."""
    return tuple(FLAT) + ("iterations",) + traced_names()

  def replace(self, **overrides) -> "Config":
    """A copy with flat keywords (``K=8``, ``model="flow"``, ``width=64``) or whole groups replaced."""
    groups = {g: {} for g in GROUPS}
    top, hyper = {}, {}
    for key, value in overrides.items():
      value = _plain(value)
      if key in GROUPS and isinstance(value, GROUPS[key][0]):
        top[key] = value
      elif key in GROUPS and isinstance(value, Mapping):      # a group's fields as a dict
        groups[key].update(value)
      elif key in FLAT:
        group, field = FLAT[key]
        groups[group][field] = value
      elif key in TRACED_BY_NAME:
        hyper[key] = value
      elif key == "hyper" and isinstance(value, Mapping):
        hyper.update(value)
      elif key in ("iterations", "hyper"):
        top[key] = value
      else:
        raise ValueError(f"unknown config field {key!r}; valid fields: {sorted(self.keywords())}")
    for group, fields in groups.items():
      if fields:
        top[group] = dataclasses.replace(top.get(group, getattr(self, group)), **fields)
    if hyper:
      top["hyper"] = top.get("hyper", self.hyper).replace(**hyper)
    return dataclasses.replace(self, **top)

  def flat(self) -> dict[str, Any]:
    """Every setting under its flat keyword (the inverse of :meth:`replace`)."""
    out = {key: getattr(getattr(self, group), field) for key, (group, field) in FLAT.items()}
    return {**out, "iterations": self.iterations, **self.hyper.as_dict()}

  def describe(self) -> dict[str, Any]:
    """:meth:`flat` as JSON-able values: arrays as ``"array[shape]"``, functions by their qualified name."""
    def show(value):
      if value is None or isinstance(value, (str, int, float, bool)):
        return value
      if isinstance(value, tuple):
        return [show(v) for v in value]
      if hasattr(value, "__array__"):
        return f"array{list(np.shape(value))}"
      return getattr(value, "__qualname__", type(value).__name__)
    return {key: show(value) for key, value in self.flat().items()}

  def static(self) -> "Config":
    """This config with the traced values at their defaults: the part that keys the compilation cache."""
    return dataclasses.replace(self, hyper=Hyper.defaults())

  def validate(self, traced: bool = True) -> "Config":
    """Raise ``ValueError`` naming the field and value of the first invalid setting; return ``self``.

    ``traced=False`` checks the static settings only (what :func:`scl.task.build` builds from
    :meth:`static`, whose traced values are placeholders: their checks against ``K_max`` or ``pool_size`` would
    refuse a valid config, e.g. ``K_max=1``)."""
    for keyword, reg in _SELECTORS:
      group, field = FLAT[keyword]
      name = getattr(getattr(self, group), field)
      reg.check(name)
      check = reg.meta(name, "validate")
      if check is not None:
        check(self)
    for group in GROUPS:
      getattr(self, group).validate()
    images = registry.DATASETS.meta(self.data.name, "images", False)
    if self.platform.reward_input != "points" and not images:
      raise ValueError(f"invalid config: reward_input={self.platform.reward_input!r}: needs an image data set "
                       f"with a classifier; dataset={self.data.name!r} has none")
    if self.platform.learned_for == "malicious" and self.reward.r_tilde_fn is not None:
      raise ValueError(f"invalid config: r_tilde_fn={self.reward.r_tilde_fn!r}: with learned_for='malicious' the "
                       "malicious users curate with the platform's learned reward R~, so r_tilde_fn would be "
                       "ignored; leave it unset, or use learned_for='all'")
    if self.model.velocity == "unet" and not images:
      raise ValueError(f"invalid config: velocity='unet': the U-Net needs [H, W, C] images; "
                       f"dataset={self.data.name!r} is not an image data set")
    if isinstance(self.iterations, bool) or not isinstance(self.iterations, (int, np.integer)) \
        or self.iterations < 0:
      raise ValueError(f"invalid config: iterations={self.iterations!r}: must be an integer >= 0")
    if traced:
      for name, value in self.hyper.as_dict().items():
        if np.ndim(value) != 0:  # it would broadcast inside the program: per atom, or across a sweep's grid
          raise ValueError(f"invalid config: {name}={value!r}: must be a single number; sweep several values "
                           f"with scl.sweep(cfg, {name}=[...])")
      validate_traced(self, **self.hyper.as_dict())
    return self


def _plain(value):
  """NumPy/JAX scalars -> Python numbers and lists -> tuples, so equal settings compare (and hash) equal and
  share a compiled program; arrays and functions are left as they are (compared by identity)."""
  if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
    return value.item()
  if hasattr(value, "shape") and value.shape == () and hasattr(value, "item"):   # a JAX scalar
    return value.item()
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  return value


def _hashable(value):
  if value is None or isinstance(value, (str, int, float, bool, tuple, _Group, Hyper)):
    return value
  return ("id", id(value))
