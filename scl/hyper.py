"""The traced hyper-parameters, declared once in :data:`TRACED`.

From this table follow the :class:`Hyper` pytree the compiled program takes, the validation of values
(:meth:`scl.Config.validate`, :func:`scl.sweep`) and the axes a sweep may take. Adding a traced
hyper-parameter is one :class:`Traced` line here (and its use in a component).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scl import curation as curation_lib
from scl import registry


@dataclasses.dataclass(frozen=True)
class Traced:
  """A traced hyper-parameter: its default, domain and meaning.

  Attributes:
    name: the keyword (``K``, ``lam``, ...).
    default: the value when not given.
    doc: what it is, with the papers' symbol.
    lo, hi: the closed domain ``[lo, hi]`` (``lo_open``: ``(lo, hi]``).
    integer: values must be whole numbers (traced as int32; else float32).
    finite: ``inf`` is not allowed.
  """

  name: str
  default: float
  doc: str
  lo: float = 0.0
  hi: float = math.inf
  lo_open: bool = False
  integer: bool = False
  finite: bool = True

  @property
  def dtype(self):
    """The traced dtype: int32 for integer hyper-parameters, else float32."""
    return jnp.int32 if self.integer else jnp.float32

  def check(self, value) -> None:
    """Raise ``ValueError`` naming the field and the value unless every entry of ``value`` is in the domain
    (a number or an array of numbers: strings and booleans are refused, not converted)."""
    kind = np.asarray(value).dtype
    if not (np.issubdtype(kind, np.integer) or np.issubdtype(kind, np.floating)):
      what = {"b": "a boolean", "U": "text", "S": "text", "O": "an object"}.get(kind.kind, str(kind))
      raise ValueError(f"invalid config: {self.name}={value!r}: {self.doc} must be a number, not {what}")
    arr = np.asarray(value, dtype=np.float64)
    low = f"({self.lo:g}" if self.lo_open else f"[{self.lo:g}"
    high = f"{self.hi:g})" if math.isinf(self.hi) and self.finite else f"{self.hi:g}]"
    domain = f"{low}, {high}" + ("" if self.finite else " (inf allowed)")
    bad = (np.isnan(arr) | (arr < self.lo) | (arr > self.hi) | ((arr == self.lo) & self.lo_open)
           | (np.isinf(arr) & self.finite))
    if self.integer:
      bad |= np.isfinite(arr) & (arr != np.round(arr))
    elif self.finite:  # traced as float32: 1e39 would run as inf
      with np.errstate(over="ignore"):
        if np.any(np.isfinite(arr) & np.isinf(arr.astype(np.float32))):
          raise ValueError(f"invalid config: {self.name}={value!r}: {self.doc} is traced as float32, where values "
                           f"beyond {float(np.finfo(np.float32).max):.4g} are inf; it must be finite")
    if np.any(bad):
      what = "an integer" if self.integer else "a number"
      raise ValueError(f"invalid config: {self.name}={value!r}: {self.doc} must be {what} in {domain}")


#: The traced hyper-parameters, declared once: :class:`Hyper`, validation and sweep axes follow from it.
TRACED: tuple[Traced, ...] = (
    Traced("K", 2, "the number of candidates K shown per choice", lo=1, integer=True),
    Traced("lam", math.inf, "λ, the weight of curated synthetic data against real data", finite=False),
    Traced("phi", 0.0, "φ, the fraction of malicious users", hi=1.0),
    Traced("kappa", 0.0, "κ, the label-flip budget as a fraction of preference pairs", hi=1.0),
    Traced("alpha", 0.8, "α, the attacker's stealth weight"),
    Traced("beta", 0.5, "β, the fraction of the pool kept by the pool filters", hi=1.0, lo_open=True),
    Traced("lr", 1e-3, "the learning rate of neural models", lo_open=True),
    Traced("l2", 1e-3, "the L2 weight of the learned reward model (> 0: without it the reward's output bias has "
           "no curvature, and the fit's implicit derivative solves a singular system)", lo_open=True),
    Traced("eps", 0.0, "ε, the defence's strength (flip rate / smoothing / outlier penalty, per defence)"),
)
TRACED_BY_NAME: dict[str, Traced] = {t.name: t for t in TRACED}


@jax.tree_util.register_pytree_node_class
class Hyper:
  """The traced hyper-parameters of :data:`TRACED`, by name: ``hyper.K``, ``hyper.lam``, ...

  In a :class:`Config` the values are Python numbers (``lam = inf`` is the fully synthetic loop); inside the
  compiled program they are scalar arrays (``K`` int32, the rest float32), with a leading axis under
  ``vmap``. A pytree: its leaves are the values in :data:`TRACED` order.
  """

  __slots__ = ("_values",)

  def __init__(self, **values):
    missing = [t.name for t in TRACED if t.name not in values]
    unknown = sorted(set(values) - set(TRACED_BY_NAME))
    if unknown:
      raise ValueError(f"unknown hyper-parameter(s) {unknown}; the traced ones are {traced_names()}")
    if missing:
      raise ValueError(f"missing hyper-parameter(s) {missing}")
    object.__setattr__(self, "_values", {t.name: values[t.name] for t in TRACED})

  @classmethod
  def defaults(cls, **overrides) -> "Hyper":
    """Every field at its :data:`TRACED` default, except ``overrides``."""
    return cls(**{**{t.name: t.default for t in TRACED}, **overrides})

  def __getattr__(self, name: str):
    try:
      return object.__getattribute__(self, "_values")[name]
    except KeyError:
      raise AttributeError(f"Hyper has no field {name!r}; fields: {traced_names()}") from None

  def __setattr__(self, name, value):
    raise dataclasses.FrozenInstanceError(f"Hyper is immutable; use .replace({name}=...)")

  def replace(self, **values) -> "Hyper":
    """A copy with ``values`` replaced (unknown names raise ``ValueError``)."""
    return Hyper(**{**self._values, **values})

  def items(self):
    """``(name, value)`` pairs in :data:`TRACED` order."""
    return self._values.items()

  def as_dict(self) -> dict[str, Any]:
    """name -> value, in :data:`TRACED` order."""
    return dict(self._values)

  def arrays(self) -> "Hyper":
    """The values as scalar arrays of each field's dtype (what the compiled program takes)."""
    return Hyper(**{t.name: jnp.asarray(self._values[t.name], t.dtype) for t in TRACED})

  def tree_flatten(self):
    """JAX pytree protocol: the values in :data:`TRACED` order, no auxiliary data."""
    return tuple(self._values[t.name] for t in TRACED), None

  @classmethod
  def tree_unflatten(cls, aux, leaves):
    """JAX pytree protocol: the inverse of :meth:`tree_flatten`."""
    del aux
    return cls(**dict(zip(traced_names(), leaves)))

  def __eq__(self, other):
    return isinstance(other, Hyper) and all(_hashable(a) == _hashable(b) for a, b in
                                            zip(self.tree_flatten()[0], other.tree_flatten()[0]))

  def __hash__(self):
    return hash(tuple(_hashable(v) for v in self.tree_flatten()[0]))

  def __repr__(self):
    return "Hyper(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"


def traced_names() -> tuple[str, ...]:
  """The names of :data:`TRACED`, in order (the sweep axes a grid may take)."""
  return tuple(t.name for t in TRACED)


def real_share(lam) -> jax.Array:
  """``1 / (1 + λ)`` (a float or a traced array), with ``λ = inf`` mapped to 0 exactly (never ``inf / inf``)."""
  lam = jnp.asarray(lam)
  return jnp.where(jnp.isinf(lam), 0.0, 1.0 / (1.0 + jnp.where(jnp.isinf(lam), 0.0, lam)))


def validate_concrete(cfg, **values) -> None:
  """:func:`validate_traced` on those of ``values`` that are concrete (numbers, arrays): a function called
  under ``jit`` or ``vmap`` gets tracers, which its caller checked (``scl.run``, ``scl.sweep``) or cannot be."""
  validate_traced(cfg, **{k: v for k, v in values.items() if not isinstance(v, jax.core.Tracer)})


def validate_traced(cfg, **values) -> None:
  """Check traced values (scalars or sequences of grid values) against their domains and ``K_max``.

  Besides the table's domains, ``eps`` (ε) is checked against the selected defence's own bound: a defence
  registered with ``eps_max=b`` (:data:`scl.registry.DEFENCES`) reads ε in ``[0, b)`` (a flip rate or a
  smoothing rate: ``b = 0.5``); with ``attack_weighting="code"`` (``α Cov + (1 − α) dist``) α is in ``[0, 1]``.
  """
  for name, value in values.items():
    TRACED_BY_NAME[name].check(value)
  defence = getattr(getattr(cfg, "platform", None), "defence", None)
  if "eps" in values and defence in registry.DEFENCES:
    eps_max = registry.DEFENCES.meta(defence, "eps_max")
    if eps_max is not None and np.any(np.asarray(values["eps"], np.float64) >= eps_max):
      what = registry.DEFENCES.meta(defence, "eps_doc", "its strength")
      raise ValueError(f"invalid config: eps={values['eps']!r}: defence={defence!r} reads ε as {what}, which "
                       f"must be in [0, {eps_max:g})")
  weighting = getattr(getattr(cfg, "platform", None), "attack_weighting", None)
  if "alpha" in values and weighting == "code" and np.any(np.asarray(values["alpha"], np.float64) > 1.0):
    raise ValueError(f"invalid config: alpha={values['alpha']!r}: attack_weighting='code' weighs "
                     "α Cov + (1 − α) dist, so α must be in [0, 1]")
  curation = getattr(getattr(cfg, "curation", None), "name", None)
  if ("beta" in values and curation in registry.CURATIONS
      and registry.CURATIONS.meta(curation, "keeps_fraction", False)):
    pool = cfg.curation.pool_size
    beta = np.asarray(values["beta"], np.float64)
    if np.any(np.asarray(curation_lib.keep_count(beta, pool)) < 1):  # the count the filter keeps
      raise ValueError(f"invalid config: beta={beta.tolist()!r}: curation={curation!r} keeps floor(β · pool_size) "
                       f"samples, none of pool_size={pool}; β must be at least {1 / pool:.3g}")
  if "K" in values and np.any(np.asarray(values["K"], np.float64) > cfg.curation.K_max):
    raise ValueError(f"invalid config: K={values['K']!r}: exceeds K_max={cfg.curation.K_max}; K_max is static "
                     "(it fixes the candidate shapes and so the random draws): raise it to sweep larger K")




def _hashable(value):
  if value is None or isinstance(value, (str, int, float, bool, tuple)):
    return value
  return ("id", id(value))
