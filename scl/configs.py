"""Paper-default configurations: ``scl.configs.<dataset>(**overrides)``.

Each builder returns a validated :class:`~scl.config.Config`; keyword overrides are any of its flat keywords
(:meth:`scl.Config.keywords`), in particular ``K``, ``lam``, ``phi``, ``kappa``, ``alpha``, ``iterations``,
``model`` and ``attack``::

    cfg = scl.configs.gaussian8()                       # paper defaults
    cfg = scl.configs.gaussian8(K=4, lam=1.0, model="flow", attack="gradient", kappa=0.2, iterations=10)

Defaults follow the second paper's public code on Gaussian-8: 10 iterations, 50,000 model samples drawn per
iteration and 25,000 kept, ``κ = 0.2``-ready attacks with ``α = 0.8``, the clipped distance reward with
``γ = 10``, ``r_min = 3``, ``x*`` = mode 0. K-choice candidates are drawn from the 50,000-sample pool
(``fresh_candidates=False``), so ``K`` up to ``K_max = 16`` costs no extra model samples.
"""

from __future__ import annotations

from typing import Any, Callable

import ml_collections

from scl import registry
from scl.config import Config

#: Flat keywords a command line cannot set (arrays, functions): ``declare_keywords`` leaves them out.
NOT_ON_COMMAND_LINE = ("points", "point_weights", "reward_fn", "r_tilde_fn")
#: The types of the settable keywords whose default is None.
_NONE_DEFAULT_TYPES = {"data_dir": str, "x_star": tuple}


def _make(base: dict, overrides: dict) -> Config:
  """``Config()`` with ``base`` then ``overrides`` (flat keywords), validated."""
  return Config().replace(**{**base, **overrides}).validate()


def gaussian8(**overrides) -> Config:
  """The Gaussian-8 ring of both papers: 8 modes on a circle of radius 2, std 0.02.

  ``ring_scale=1.414`` reproduces the second paper's code, which divides its data by the ring's standard
  deviation while keeping ``x* = (2, 0)``. With ``model="categorical"`` the ring is discretised to
  ``n_atoms`` points sampled from it (``p_data`` uniform on them).
  """
  return _make(dict(dataset="gaussian8"), overrides)


def two_moons(**overrides) -> Config:
  """Two-moons (the first paper's other 2-D data set), reward ``-2 * max(|x - (-1, 0)| - 0.5, 0)``.

  The rewarded region is the left tip of the upper moon.
  """
  return _make(dict(dataset="two_moons", x_star=(-1.0, 0.0), gamma=2.0, r_min=0.5), overrides)


def points(support, weights=None, **overrides) -> Config:
  """Any finite point set ``[n, d]`` with ``p_data ∝ weights`` (non-negative, not all 0, normalised to sum to
  1; default uniform); categorical model.

  The reward defaults to the clipped distance to the first point; pass ``reward="custom"`` and
  ``reward_fn=...`` (a JAX function ``[n, d] -> [n]``) for your own.
  """
  base = dict(dataset="points", points=support, point_weights=weights, model="categorical")
  return _make(base, overrides)


#: Settings shared by the image presets: the flow-matching model on pixels, the platform's linear reward head
#: on the frozen classifier's logits (the reference's ``Linear(10, 1)``), and Ferbach's ``γ = 5``.
_IMAGES = dict(model="flow", reward="class_prob", gamma=5.0, target_class=0, reward_input="logits",
               reward_hidden=(), K=4)


def digits(**overrides) -> Config:
  """scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes; offline), the image default.

  The model is flow matching with a residual MLP on the 64 pixels, sized for 2 CPU cores; the reward is
  ``5 · P(class 0 | x)`` under a CNN scl trains on the training split (``reward="class_index"``:
  ``10 − class``).
  """
  base = dict(dataset="digits", **_IMAGES, pool_size=4000, n_keep=2000, n_eval=1000, iterations=6,
              width=256, depth=3, init_steps=3000, train_steps=500, batch_size=256, sample_steps=40,
              n_pairs=1000)
  return _make(base, overrides)


def cifar10(**overrides) -> Config:
  """CIFAR-10 (prepared once with ``tfds build cifar10``; see BUILD.md), the papers' scale: 50,000 samples
  drawn and 25,000 kept per iteration. A GPU is advisable."""
  base = dict(dataset="cifar10", **_IMAGES, pool_size=50_000, n_keep=25_000, n_eval=5000, iterations=10,
              width=1024, depth=4, init_steps=20_000, train_steps=2000, batch_size=256, sample_steps=100,
              n_pairs=50_000)
  return _make(base, overrides)


def cifar100(**overrides) -> Config:
  """CIFAR-100 (``tfds build cifar100``); ``class_index`` maps the 100 classes to ``10 − ⌊class / 10⌋``."""
  return cifar10(**{"dataset": "cifar100", **overrides})


def declare_keywords(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Declare in ``config`` every flat keyword of :class:`~scl.config.Config` it does not set, as a typed None.

  For the experiment binaries' config files: ml_collections accepts ``--config.<field>=value`` only for fields
  the file defines, so after this every keyword (``--config.width=64``, ``--config.eps=0.1``) can be given
  on the command line, parsed to its type. A field left None stands for the builder's default: binaries
  drop None values (:func:`set_keywords`) before calling a builder. Arrays and functions
  (:data:`NOT_ON_COMMAND_LINE`) are not declared. Returns ``config``, changed in place.
  """
  defaults = Config().flat()
  for key in Config.keywords():
    if key in config or key in NOT_ON_COMMAND_LINE:
      continue
    kind = type(defaults[key]) if defaults[key] is not None else _NONE_DEFAULT_TYPES[key]
    config[key] = ml_collections.config_dict.placeholder(kind)
  return config


def set_keywords(config: ml_collections.ConfigDict, binary_fields=()) -> dict:
  """``config``'s fields as a dict, less ``binary_fields`` and those left None: a binary's builder keywords
  (and what its summary records as its config)."""
  return {k: v for k, v in config.to_dict().items() if k not in binary_fields and v is not None}


#: The builders of this module, by data set name.
BUILDERS = ("gaussian8", "two_moons", "points", "digits", "cifar10", "cifar100")


def builder(dataset: str) -> Callable[..., Config]:
  """The builder for ``dataset``: this module's preset of that name, or for another registered data set
  (:data:`scl.registry.DATASETS`) ``Config`` defaults with ``dataset`` set. Raises ``ValueError`` naming the
  valid data sets otherwise (the binaries' ``--config.dataset``)."""
  if dataset in BUILDERS:
    return globals()[dataset]
  if dataset in registry.DATASETS:
    return lambda **overrides: _make(dict(dataset=dataset), overrides)
  raise ValueError(f"invalid config: dataset={dataset!r}: unknown data set; valid: "
                   f"{sorted(set(BUILDERS) | set(registry.DATASETS.names()))}")


def from_flags(config: ml_collections.ConfigDict, binary_fields=()) -> Callable[..., Config]:
  """``make(**overrides)``: the builder of ``config.dataset`` (:func:`builder`) called with ``config``'s set
  keywords (:func:`set_keywords`, less ``binary_fields``), ``overrides`` on top. What an experiment binary
  builds each of its runs from.

  The returned ``make`` records each run's ``overrides``; :func:`check_runs` then finds a top-level setting that
  every run replaced (a ``--config.lam=0.5`` where every cell sets its own ``lam``), which binaries refuse.
  """
  base = set_keywords(config, binary_fields)
  make = builder(base.pop("dataset"))

  def make_run(**overrides):
    make_run.runs.append(dict(overrides))
    return make(**{**base, **overrides})

  make_run.base, make_run.runs = base, []
  return make_run


def check_runs(make: Callable[..., Config]) -> None:
  """Raise ``ValueError`` naming the field where every run ``make`` (from :func:`from_flags`) built replaced a
  top-level setting by another value: that setting reached no run, so it was ignored silently. A setting that
  some run keeps is a base the other runs vary (a variant's ``model``), not an error."""
  runs = make.runs
  clash = sorted(k for k, v in make.base.items()
                 if runs and all(k in r and not _same_value(v, r[k]) for r in runs))
  if clash:
    raise ValueError("invalid config: " + ", ".join(f"{k}={make.base[k]!r}" for k in clash) + ": every run of this "
                     "binary sets " + ", ".join(f"{k} itself (e.g. {runs[0][k]!r})" for k in clash) + ", so the "
                     "top-level value would be ignored; set it through the binary's own fields (its settings, "
                     "attacks, defences or variants)")


def flag_values(name: str, value: Any) -> list[float]:
  """A binary's grid field as floats: a number, a sequence, or the text of a tuple (``"(0.5, 1.0, inf)"``:
  ml_collections' flag parser cannot read ``inf`` in a tuple and passes the text through, as a one-entry
  tuple). Raises
  ``ValueError`` naming the field for anything else (text that is not numbers, booleans)."""
  if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], str):
    value = value[0]  # what the flag parser passes for a tuple field: ("(0.5, 1.0, inf)",)
  if isinstance(value, str):
    text = value.strip()
    if text[:1] in "([" and text[-1:] in ")]":
      text = text[1:-1]
    entries = [t.strip() for t in text.split(",") if t.strip()]
  else:
    entries = list(value) if isinstance(value, (list, tuple)) else [value]
  try:
    if any(isinstance(v, bool) for v in entries):
      raise TypeError("a boolean")
    return [float(v) for v in entries]
  except (TypeError, ValueError):
    raise ValueError(f"invalid config: {name}={value!r}: give a number or a tuple of numbers, such as "
                     "(0.5, 1.0, inf)") from None


def _same_value(a: Any, b: Any) -> bool:
  try:
    return bool(a == b) or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)
  except Exception:  # arrays and the like: the same object only
    return a is b
