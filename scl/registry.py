"""Registries: one per kind of component, filled by the modules that define the components.

Every choice a configuration makes by name — the data set, the generative model family, the reward, the
curation rule, the attack, the preference label mode, the platform's defence — is looked up in one
:class:`Registry`. Allowed names, validation messages and config choices all come from it, so adding a
component is one function plus one registration, and a user can add their own from outside scl::

    import scl

    @scl.register("attack", "flip_first")
    def flip_first(key, x, z, o, view, hyper, cfg):
      return scl.attacks.flip_top(o, -jnp.arange(o.shape[0], dtype=jnp.float32), hyper.kappa)

    scl.run(scl.configs.gaussian8(attack="flip_first", kappa=0.1), seed=0)

The signature each kind expects (siblings share it) is :attr:`Registry.signature`; see ``scl.registry.KINDS``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator


class Registry:
  """Named components of one kind, each an entry with the same signature as its siblings.

  Attributes:
    kind: what the entries are (``"data set"``, ``"model"``, ...), used in messages.
    field: the config field that selects an entry (``"dataset"``, ``"model"``, ...).
    signature: the call signature every entry implements (documentation).
  """

  def __init__(self, kind: str, field: str, signature: str):
    self.kind = kind
    self.field = field
    self.signature = signature
    self._entries: dict[str, Any] = {}
    self._meta: dict[str, dict[str, Any]] = {}

  def register(self, name: str, entry: Any = None, *, replace: bool = False, **meta) -> Any:
    """Register ``entry`` under ``name``; without ``entry``, a decorator. Returns the entry.

    ``meta`` are facts about the entry the loop may ask (e.g. ``finite_support=True`` for a model family that
    needs a finite support). A name already taken raises ``ValueError`` unless ``replace=True``.
    """
    if not isinstance(name, str) or not name:
      raise ValueError(f"a {self.kind} needs a non-empty string name, got {name!r}")

    def add(entry):
      if not callable(entry):
        raise TypeError(f"{self.kind} {name!r} must be callable ({self.signature}), got {entry!r}")
      if name in self._entries and not replace:
        raise ValueError(f"{self.kind} {name!r} is already registered; pass replace=True to override it")
      replaced = name in self._entries and (self._entries[name] is not entry or self._meta[name] != meta)
      self._entries[name] = entry
      self._meta[name] = dict(meta)
      if replaced:  # programs built from the old entry are cached under the same config: drop them
        for clear in _ON_REPLACE:
          clear()
      return entry

    return add if entry is None else add(entry)

  def check(self, name: Any) -> None:
    """Raise ``ValueError`` naming the config field and the value if ``name`` is not registered."""
    if name not in self._entries:
      raise ValueError(f"invalid config: {self.field}={name!r}: unknown {self.kind}; choose one of "
                       f"{self.names()}")

  def __getitem__(self, name: str) -> Any:
    self.check(name)
    return self._entries[name]

  def meta(self, name: str, key: str, default: Any = None) -> Any:
    """The metadata ``key`` given when ``name`` was registered (``default`` if none)."""
    self.check(name)
    return self._meta[name].get(key, default)

  def names(self) -> tuple[str, ...]:
    """Registered names, in registration order."""
    return tuple(self._entries)

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __repr__(self) -> str:
    return f"Registry({self.kind!r}: {', '.join(self.names())})"


DATASETS = Registry("data set", "dataset", "(cfg: scl.Config) -> scl.task.Dataset")
MODELS = Registry("generative model family", "model",
                  "(cfg: scl.Config, event_shape: tuple, n_atoms: int | None) -> scl.models.Model")
REWARDS = Registry("reward", "reward", "(cfg: scl.Config, dataset: scl.task.Dataset) -> scl.rewards.Reward")
CURATIONS = Registry("curation rule", "curation",
                     "(key, r [P], r_tilde [P], hyper: scl.Hyper, cfg: scl.config.CurationConfig) -> "
                     "weights [P]")
ATTACKS = Registry("attack", "attack",
                   "(key, x [n, *event], z [n, *event], o [n], view: scl.attacks.AttackerView, "
                   "hyper: scl.Hyper, cfg: scl.Config) -> (o_flipped [n], flipped [n] bool[, stats: dict])")
LABELS = Registry("preference label mode", "labels", "(key, r_x [n], r_z [n]) -> o [n] in [0, 1]")
DEFENCES = Registry("defence", "defence",
                    "(key, x [n, *event], z [n, *event], o [n], theta0, net: scl.reward_model.RewardNet, "
                    "hyper: scl.Hyper, cfg: scl.Config) -> (theta_platform, flagged [n] bool or None"
                    "[, stats: dict])")

#: kind -> registry, for :func:`register`.
KINDS: dict[str, Registry] = {
    "dataset": DATASETS, "model": MODELS, "reward": REWARDS, "curation": CURATIONS, "attack": ATTACKS,
    "labels": LABELS, "defence": DEFENCES,
}


#: Called after an entry is replaced by another (``replace=True``): ``cache_clear`` of the caches of programs
#: built from configs, which name their components and so would keep the old one (:func:`on_replace`).
_ON_REPLACE: list[Callable[[], None]] = []


def on_replace(cached: Callable) -> Callable:
  """Decorator of a ``functools.lru_cache`` function: its cache is cleared whenever an entry is replaced."""
  _ON_REPLACE.append(cached.cache_clear)
  return cached


def user_entries(flat: dict[str, Any]) -> dict[str, Any]:
  """``{field: entry}`` of the components a config (``cfg.flat()``) selects that are defined outside scl: their
  code is not in scl's source digest, so a saved result's fingerprint must cover them."""
  out = {}
  for registry in KINDS.values():
    name = flat.get(registry.field)
    if isinstance(name, str) and name in registry:
      entry = registry[name]
      if not str(getattr(entry, "__module__", "") or "").startswith("scl."):
        out[registry.field] = (entry, registry._meta[name])
  return out


def register(kind: str, name: str, entry: Callable | None = None, *, replace: bool = False, **meta):
  """Register a component of ``kind`` (one of :data:`KINDS`) under ``name``; a decorator without ``entry``.

  Example: ``scl.register("model", "my_flow", build_my_flow)`` then ``scl.configs.gaussian8(model="my_flow")``.
  Replacing an entry (``replace=True``) drops the programs compiled with the old one; results saved in a workdir
  (checkpoints, sweep points, cells) record the code of entries defined outside scl, so they are not reused.
  """
  if kind not in KINDS:
    raise ValueError(f"unknown component kind {kind!r}; choose one of {tuple(KINDS)}")
  return KINDS[kind].register(name, entry, replace=replace, **meta)
