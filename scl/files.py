"""Atomic result files: a run that is stopped never leaves a half-written table, JSON or checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
from typing import Any, Iterator, Mapping

import numpy as np


_UMASK_LOCK = threading.Lock()


def slug(name: str) -> str:
  """``name`` as a file name: runs of characters other than ASCII letters and digits as ``_``, lower case."""
  return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def unique_slugs(names, what: str = "variants") -> dict[str, str]:
  """name -> :func:`slug` for each of ``names``; a ``ValueError`` naming both when two share one (their files,
  checkpoints among them, would overwrite each other)."""
  out, seen = {}, {}
  for name in names:
    s = slug(name)
    if s in seen:
      raise ValueError(f"invalid config: {what} {seen[s]!r} and {name!r} have the same file name {s!r}; rename one")
    out[name], seen[s] = s, name
  return out


def current_umask() -> int:
  """The process's umask, read without changing it where Linux reports it (``/proc/self/status``, since 4.7).

  Elsewhere it is read by setting ``0o077`` and restoring it, under a lock: a file another thread creates in that
  instant gets the stricter mode, never a wider one.
  """
  try:
    with open("/proc/self/status", encoding="ascii", errors="replace") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  with _UMASK_LOCK:
    mask = os.umask(0o077)
    os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[Any]:
  """Open a temporary file beside ``path``; on success rename it onto ``path`` (atomic on POSIX).

  The file gets the permissions ``open`` would give it (``0o666`` less the umask), not ``mkstemp``'s ``0o600``.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
  try:
    os.chmod(tmp, 0o666 & ~current_umask())
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def to_jsonable(value: Any) -> Any:
  """Arrays and numpy scalars to lists and floats, in standard JSON: ±inf become the strings ``"inf"`` and
  ``"-inf"`` (``float()`` reads them back; λ = inf is the fully synthetic loop, not a missing value), NaN
  becomes None (null)."""
  if isinstance(value, Mapping):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v) for v in value]
  if hasattr(value, "__array__"):
    arr = np.asarray(value)
    if arr.ndim == 0:
      return to_jsonable(arr.item())
    return to_jsonable(arr.tolist())
  if isinstance(value, float) and not np.isfinite(value):
    return None if np.isnan(value) else ("inf" if value > 0 else "-inf")
  return value


def write_json(path: str, obj: Any) -> None:
  """Write ``obj`` as indented standard JSON atomically (arrays as lists; :func:`to_jsonable`)."""
  with atomic_open(path) as f:
    json.dump(to_jsonable(obj), f, indent=2)


def write_bytes(path: str, data: bytes) -> None:
  """Write ``data`` to ``path`` atomically."""
  with atomic_open(path, "wb") as f:
    f.write(data)


def write_csv(path: str, frame) -> None:
  """Write a pandas DataFrame atomically."""
  with atomic_open(path) as f:
    frame.to_csv(f, index=False)


def save_figure(path: str, fig, close: bool = True) -> None:
  """Save a matplotlib figure atomically as PNG, then close it (unless ``close=False``): pyplot keeps every
  figure it made open until closed, so a binary that saves many would hold them all in memory."""
  try:
    with atomic_open(path, "wb") as f:
      fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
  finally:
    if close:
      import matplotlib.pyplot as plt  # noqa: PLC0415 (only where figures are saved)
      plt.close(fig)
