"""Checkpointed runs and sweeps: work saved atomically as it finishes, resumed exactly after a stop.

A checkpoint (``<workdir>/checkpoint.msgpack``, written atomically) holds the model after the last finished
chunk, the outputs so far and a **fingerprint** of the run: every config setting under its flat keyword, the
seed and scl's source code (:func:`code_digest`), with arrays by a SHA-256 digest of their bytes and functions
(``reward_fn``, ``r_tilde_fn``) by their module, name, byte code, constants, defaults, closure contents and the
module-level values they read (modules and classes by name and the bytes of their module's source file; a
user's helper module or class, outside Python's, the installed packages' and scl's, also by the attributes and
members the code reads as they are at run time, which is all a notebook's class has).
A checkpoint is only resumed by the same run of the same code; a run whose fingerprint cannot be trusted (a
function closing over an object that cannot be digested) is refused, with a message, rather than resumed on a
guess. A function may carry its own identity as a string attribute ``scl_fingerprint``.

A sweep with a ``workdir`` (:func:`scl.sweep`) keeps its finished grid points in a :class:`PointStore`
(``<workdir>/sweep_points/``): each finished chunk is written atomically to a file of its own.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import numbers
import os
import sys
import sysconfig
import time
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import serialization

from scl import config as config_lib
from scl import files
from scl import hyper as hyper_lib
from scl import loop
from scl import registry

#: Version of the checkpoint layout; a checkpoint of another version is refused with a message.
FORMAT = 2
FILENAME = "checkpoint.msgpack"
SWEEP_FILENAME = "sweep_points.npz"  # before 2026-12-05: one file, rewritten per chunk
SWEEP_DIRNAME = "sweep_points"
#: The fingerprint field of a run checkpoint that holds :func:`code_digest`.
CODE_FIELD = "scl_code"


class Untrusted(Exception):
  """A value whose identity cannot be digested (its fingerprint would not change when it does)."""


def _digest(value: Any, depth: int = 0, active: frozenset = frozenset()) -> str:
  """A string that changes when ``value`` does (content, not identity); raises :class:`Untrusted`.

  ``active``: the ids of the functions and classes being digested further up (a method that names its own class,
  or two functions that call each other, are digested once)."""
  if depth > 20:
    raise Untrusted("nested too deeply")
  if isinstance(value, (types.FunctionType, type)) and id(value) in active:
    return f"cycle:{getattr(value, '__qualname__', '')}"
  inner = active | {id(value)} if isinstance(value, (types.FunctionType, type)) else active

  def sub(v):
    return _digest(v, depth + 1, inner)

  if value is None or isinstance(value, (bool, int, float, str, bytes)):
    return repr(value)
  if isinstance(value, (tuple, list)):
    return "[" + ",".join(sub(v) for v in value) + "]"
  if isinstance(value, dict):
    return "{" + ",".join(f"{k!r}:{sub(v)}" for k, v in sorted(value.items(), key=str)) + "}"
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    arr = np.asarray(value)
    return f"array{arr.shape}{arr.dtype}:{hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()}"
  if isinstance(getattr(value, "scl_fingerprint", None), str):
    return "named:" + value.scl_fingerprint
  if isinstance(value, functools.partial):
    return f"partial({sub(value.func)},{sub(value.args)},{sub(value.keywords)})"
  if isinstance(value, types.FunctionType):
    closure = [c.cell_contents for c in value.__closure__ or ()]
    # The module-level names the code reads (``sign`` in ``lambda x: sign * x``) are part of what it does.
    names = _global_names(value.__code__)
    used = {name: value.__globals__[name] for name in sorted(names)
            if name in value.__globals__ and value.__globals__[name] is not value}
    # a user's helper module is read through its attributes (``helpers.SCALE``, ``helpers.reward``): digest those
    # the code names, so that a value set at run time (``helpers.SCALE = -5``) counts, not only the file
    # (a global or a closure cell)
    def read(module):
      if not isinstance(module, types.ModuleType) or _is_library(module):
        return module
      attrs = {a: getattr(module, a) for a in sorted(names)
               if hasattr(module, a) and not isinstance(getattr(module, a), types.ModuleType)}
      try:
        return f"module:{module.__name__}:{_module_file_digest(module)}:{sub(attrs)}"
      except Untrusted:  # with a source file, the file stands for what cannot be digested; without, refused
        if not _module_file_digest(module):
          raise
        return module

    used = {name: read(v) for name, v in used.items()}
    closure = [read(v) for v in closure]
    code = _code_digest(value.__code__)
    return (f"fn:{value.__module__}.{value.__qualname__}:{code}:{sub(value.__defaults__)}:"
            f"{sub(value.__kwdefaults__)}:{sub(closure)}:{sub(used)}")
  if isinstance(value, type):  # by name and the source file of its module (a class's methods live there)
    module = sys.modules.get(value.__module__)
    out = f"class:{value.__module__}.{value.__qualname__}:{_module_file_digest(module)}"
    if _is_library(module):
      return out
    # a user's class: also its methods and attributes as they are now (edited in a notebook, which has no
    # source file, or set at run time); where one cannot be digested the source file must stand for it
    try:
      return out + ":" + sub({k: _unwrap_member(v) for k, v in vars(value).items() if k not in _CLASS_SKIP})
    except Untrusted:
      if not _module_file_digest(module):
        raise Untrusted(f"class {value.__qualname__} has no source file and a member that cannot be digested")
      return out
  if isinstance(value, types.BuiltinFunctionType) or isinstance(value, np.ufunc):
    return f"builtin:{getattr(value, '__module__', '')}.{value.__name__}"
  if isinstance(value, types.ModuleType):  # a helper module's functions and constants live in its file
    if not _is_library(value) and not _module_file_digest(value):
      raise Untrusted(f"module {value.__name__} has no source file")
    return f"module:{value.__name__}:{_module_file_digest(value)}"
  wrapped = getattr(value, "__wrapped__", None)  # jax.jit and functools.wraps keep the function here
  if wrapped is not None:
    return "wrapped:" + sub(wrapped)
  raise Untrusted(f"cannot digest a {type(value).__name__}")


_CLASS_SKIP = frozenset({"__dict__", "__weakref__", "__doc__", "__module__", "__qualname__", "__annotations__",
                         "__firstlineno__", "__static_attributes__"})


def _unwrap_member(member: Any) -> Any:
  """A class member as the functions it holds (static and class methods, properties)."""
  if isinstance(member, (staticmethod, classmethod)):
    return member.__func__
  if isinstance(member, property):
    return (member.fget, member.fset, member.fdel)
  return member


@functools.lru_cache(maxsize=None)
def _library_roots() -> tuple[str, ...]:
  paths = sysconfig.get_paths()
  roots = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
  roots.add(os.path.dirname(os.path.realpath(__file__)))  # scl itself: its code is in code_digest()
  return tuple(sorted(roots))


def _is_library(module: types.ModuleType | None) -> bool:
  """Whether a module is Python's, an installed package's or scl's (digested by name and source file), not a
  user's helper or notebook (whose state at run time is digested too)."""
  if module is None or module.__name__ in sys.builtin_module_names:
    return True
  path = getattr(module, "__file__", None)
  if not path:
    return False
  path = os.path.realpath(path)
  return path.endswith((".so", ".pyd")) or any(path.startswith(root + os.sep) for root in _library_roots())


def _module_file_digest(module: types.ModuleType | None) -> str:
  """SHA-256 of a module's source file (``""`` for a module without one, as ``builtins``)."""
  path = getattr(module, "__file__", None)
  if not path or not os.path.isfile(path):
    return ""
  stat = os.stat(path)
  return _file_digest(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1024)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:  # keyed by the file's stat: an edit reads it anew
  del mtime_ns, size
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def _global_names(code: types.CodeType) -> set[str]:
  """Names a code object (and the code nested in it) may read from its globals."""
  names = set(code.co_names)
  for const in code.co_consts:
    if isinstance(const, types.CodeType):
      names |= _global_names(const)
  return names


def _code_digest(code: types.CodeType) -> str:
  h = hashlib.sha256(code.co_code)
  for const in code.co_consts:
    h.update((_code_digest(const) if isinstance(const, types.CodeType) else repr(const)).encode())
  h.update(repr(code.co_names).encode())
  return h.hexdigest()[:16]


def fingerprint(cfg: config_lib.Config, seed: int) -> dict[str, str]:
  """flat keyword -> digest of its value, and the seed, and ``<field>:entry`` -> digest of each selected
  component registered from outside scl (its code is not in :func:`code_digest`); raises :class:`Untrusted`
  naming the field."""
  flat = cfg.flat()
  # values as the compiled run takes them: seed=np.int64(5) and 5, K=2.0 and 2 are the same run
  flat.update({name: np.asarray(flat[name], t.dtype).item() for name, t in hyper_lib.TRACED_BY_NAME.items()
               if name in flat and isinstance(flat[name], (numbers.Number, np.generic))})
  values = {**flat, "seed": int(seed) if isinstance(seed, (numbers.Integral, np.integer)) else seed}
  values.update({f"{field}:entry": entry for field, entry in registry.user_entries(flat).items()})
  out = {}
  for name, value in values.items():
    try:
      out[name] = _digest(value)
    except Untrusted as e:
      raise Untrusted(f"{name}={value!r}: {e}") from None
  return out


def _load(path: str, fp: dict, workdir: str) -> dict:
  try:
    with open(path, "rb") as f:
      state = serialization.msgpack_restore(f.read())
  except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
    raise ValueError(f"workdir {workdir!r}: {FILENAME} cannot be read ({type(e).__name__}: {e}); delete it or "
                     "use a new workdir") from e
  version = state.get("format") if isinstance(state, dict) else None
  if version != FORMAT:
    raise ValueError(f"workdir {workdir!r} holds a checkpoint written by another version of scl (format "
                     f"{version!r}, this version reads {FORMAT}); delete {FILENAME} or use a new workdir")
  saved = json.loads(state["fingerprint"])
  if saved != fp:
    diff = sorted(k for k in set(saved) | set(fp) if saved.get(k) != fp.get(k))
    why = f" ({CODE_FIELD}: scl's source code changed since it was written)" if CODE_FIELD in diff else ""
    raise ValueError(f"workdir {workdir!r} holds a checkpoint of a different run (fields {diff} differ{why}); "
                     f"use a new workdir or delete {FILENAME}")
  return state


def run_with_checkpoints(cfg: config_lib.Config, seed: int, workdir: str, every: int,
                         progress: bool) -> loop.Result:
  """:func:`scl.run` with a ``workdir``: chunks of ``every`` iterations, a checkpoint after each."""
  try:
    fp = fingerprint(cfg, seed)
  except Untrusted as e:
    raise ValueError(f"cannot checkpoint this run: its fingerprint cannot be trusted ({e}); give the function "
                     "a string attribute scl_fingerprint that names it, or run without a workdir") from None
  fp[CODE_FIELD] = code_digest()  # a run is not continued by other code: its iterations would mix two versions
  os.makedirs(workdir, exist_ok=True)
  init, chunk, final, data = loop.jitted_pieces(cfg.static())
  hyper, key = cfg.hyper.arrays(), jax.random.PRNGKey(seed)
  path = os.path.join(workdir, FILENAME)
  T = cfg.iterations

  done, history = 0, None
  if os.path.exists(path):  # resume: p_0 is not trained again, only its structure is traced
    state = _load(path, fp, workdir)
    params = serialization.from_state_dict(jax.eval_shape(init, hyper, key, data), state["params"])
    done = int(state["done"])
    history = state["history"] or None
  else:
    params = init(hyper, key, data)

  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=T, initial=done, desc=f"scl {cfg.data.name}/{cfg.model.name}", unit="it")
  while done < T:
    n = min(every, T - done)
    params, outs = chunk(params, hyper, key, data, jnp.arange(done, done + n))
    outs = jax.device_get(outs)
    history = outs if history is None else jax.tree.map(lambda a, b: np.concatenate([a, b], 0), history, outs)
    done += n
    state = {"format": FORMAT, "fingerprint": json.dumps(fp), "done": done,
             "params": serialization.to_state_dict(jax.device_get(params)), "history": history}
    files.write_bytes(path, serialization.msgpack_serialize(state))
    if bar is not None:
      bar.update(n)
      bar.set_postfix(expected_reward=float(outs["expected_reward"][-1]))
  if bar is not None:
    bar.close()
  outs = loop.stack(final(params, hyper, key, data), history)
  return loop.to_result(cfg, seed, params, outs)


#: Source files whose bytes :func:`code_digest` covers.
CODE_SUFFIXES = (".py", ".cc", ".c", ".h")


@functools.lru_cache(maxsize=4)
def code_digest(root: str | None = None) -> str:
  """A SHA-256 digest of scl's source (every ``CODE_SUFFIXES`` file under ``root``, default the ``scl`` package,
  by relative path and bytes): results saved by other code are not reused (sweep points, experiment cells)."""
  root = root or os.path.dirname(os.path.abspath(__file__))
  h = hashlib.sha256()
  for directory, subdirs, names in sorted(os.walk(root)):
    subdirs.sort()
    for name in sorted(names):
      path = os.path.join(directory, name)
      # Regular files only: an editor's lock file (``.#loop.py``, a dangling link) is not source.
      if name.endswith(CODE_SUFFIXES) and os.path.isfile(path) and not os.path.islink(path):
        h.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
          h.update(hashlib.sha256(f.read()).digest())
  return h.hexdigest()


class PointStore:
  """The finished points of a sweep, in ``<workdir>/sweep_points/``: one file per finished chunk, written once.

  A point is known by the bytes of its inputs (its traced hyper-parameters and PRNG key) under ``shared``, a
  digest of what every point shares (static config, input layout, outputs kept, scl's code). So a rerun finds
  the points a stopped run finished, and a grown grid finds those of the smaller one. Each :meth:`add` writes
  its chunk's points to a new file atomically: saving costs the chunk's bytes, not the sweep's so far. Files
  written under another ``shared`` digest, and files that cannot be read, are not used (with a warning), and
  are deleted when this sweep saves its first chunk.

  Only the ``writer`` (process 0 of several) writes. The others read the same files, so the workdir must be on
  a file system every process sees.
  """

  def __init__(self, workdir: str, shared: str, inputs: dict[str, np.ndarray], writer: bool = True):
    self.path = os.path.join(workdir, SWEEP_DIRNAME)
    self.writer = writer
    self.digest = hashlib.sha256(shared.encode()).hexdigest()
    n = len(next(iter(inputs.values())))
    self.rows = np.concatenate([np.ascontiguousarray(inputs[k]).reshape(n, -1).view(np.uint8)
                                for k in sorted(inputs)], 1)
    if writer:  # before any compute: a workdir it cannot write to would lose the first chunk's work
      try:
        os.makedirs(self.path, exist_ok=True)
        if not os.access(self.path, os.W_OK | os.X_OK):
          raise PermissionError(f"{self.path} is not writable")
      except OSError as e:
        raise ValueError(f"cannot keep this sweep's points in workdir {workdir!r}: {e}") from None
    self._parts: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []  # (rows, outputs) of each saved chunk
    self._stale: list[str] = []  # files to delete when this sweep first saves
    self._written = 0
    legacy = os.path.join(workdir, SWEEP_FILENAME)  # one rewritten file, before 2026-12-05
    if os.path.exists(legacy):
      logging.warning("%s is in an older layout; it will be replaced by %s/", legacy, self.path)
      self._stale.append(legacy)
    reasons: dict[str, list[str]] = {}
    if os.path.isdir(self.path):
      for name in sorted(os.listdir(self.path)):
        if name.endswith(".npz") and not name.startswith("."):
          reason = self._load(os.path.join(self.path, name))
          if reason:
            reasons.setdefault(reason, []).append(name)
    for reason, names in reasons.items():
      logging.warning("%d file(s) in %s (%s) %s; they will be replaced", len(names), self.path,
                      ", ".join(names[:3]) + (", ..." if len(names) > 3 else ""), reason)
      self._stale += [os.path.join(self.path, name) for name in names]
    index = {}
    for offset, row in enumerate(row for rows, _ in self._parts for row in rows):
      index[row.tobytes()] = offset
    # Bookkeeping over grid points (not samples): one dictionary lookup per point.
    self.found = np.array([index.get(row.tobytes(), -1) for row in self.rows], np.int64)
    self._saved = sum(len(rows) for rows, _ in self._parts)

  def _load(self, path: str) -> str | None:
    """Keep the chunk at ``path`` if it is this sweep's and reads whole; else say why not."""
    try:
      with np.load(path, allow_pickle=False) as f:
        if str(f["digest"]) != self.digest:
          return "hold the points of another sweep setting (static config, outputs kept or scl's code)"
        rows = f["rows"]
        saved = {k[len("out/"):]: f[k] for k in f.files if k.startswith("out/")}
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file is replaced, not trusted
      return f"cannot be read ({type(e).__name__}: {e})"
    if (rows.shape[1:] != self.rows.shape[1:] or any(len(v) != len(rows) for v in saved.values())
        or (self._parts and set(saved) != set(self._parts[0][1]))):
      return "have another layout"
    self._parts.append((rows, saved))
    return None

  def todo(self) -> np.ndarray:
    """Indices of the points not saved yet."""
    return np.flatnonzero(self.found < 0)

  def add(self, points: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
    """Record ``outputs`` (name -> ``[len(points), ...]``) of ``points`` (indices), in a new file of their own."""
    outputs = {k: np.asarray(v) for k, v in outputs.items()}
    rows = self.rows[points]
    self._parts.append((rows, outputs))
    self.found[points] = self._saved + np.arange(len(points))
    self._saved += len(points)
    if self.writer:
      buffer = io.BytesIO()
      np.savez(buffer, digest=np.asarray(self.digest), rows=rows, **{f"out/{k}": v for k, v in outputs.items()})
      # The name is unique to this store's digest, process and chunk: no earlier chunk file is overwritten.
      name = f"{self.digest[:16]}-{os.getpid()}-{time.time_ns():x}-{self._written:06d}.npz"
      files.write_bytes(os.path.join(self.path, name), buffer.getvalue())
      self._written += 1
      for path in self._stale:
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)
      self._stale = []

  def outputs(self) -> dict[str, np.ndarray]:
    """name -> ``[N, ...]`` outputs of every point, in grid order (all must be saved)."""
    assert np.all(self.found >= 0), "outputs() before every point is saved"
    names = self._parts[0][1] if self._parts else {}
    return {k: np.concatenate([saved[k] for _, saved in self._parts], 0)[self.found] for k in names}
