"""What a benchmark figure was measured on, and how to time a call: shared by the benchmark scripts.

Imports nothing beyond the standard library at module level (no jax, no torch), so that a worker running in
another interpreter (e.g. the PyTorch environment of ``benchmarks/reference.py``) can use it too.

* :func:`machine` — CPU model, logical CPUs / physical cores / CPUs this process may run on, the vector
  extensions the kernel reports in ``/proc/cpuinfo`` (avx2, avx512f, fma, ...), memory, OS, Python.
* :func:`load_average` and :func:`peak_rss_mb` — the 1/5/15-minute load averages and the peak resident set
  size of this process (``VmHWM``; each worker process reports its own).
* :func:`pin_threads` — restrict this process to ``n`` CPUs and tell OpenMP/MKL/XLA to use ``n`` threads;
  call it before jax or torch is imported.
* :func:`time_calls` — wall and CPU seconds of a call: a warm-up, then the median (and all) of repeats.
* :func:`core_roundtrip_ns` — what a hand-off between two threads on two CPUs costs at this moment (a cache
  line's round trip, ``_roundtrip.c`` built with the system's C compiler on first use).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

#: Vector / matrix extensions reported when present in the ``flags`` line of /proc/cpuinfo.
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
                "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
                "asimd", "sve", "sve2")


def _cpuinfo() -> list[dict[str, str]]:
  """``/proc/cpuinfo`` as one ``{key: value}`` per logical CPU (empty where there is no such file)."""
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
  except OSError:
    return []
  cpus = []
  for block in text.strip().split("\n\n"):
    entry = {}
    for line in block.splitlines():
      if ":" in line:
        k, v = line.split(":", 1)
        entry[k.strip()] = v.strip()
    if entry:
      cpus.append(entry)
  return cpus


def load_average() -> list[float] | None:
  """1, 5 and 15-minute load averages, or None where the OS has none."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def peak_rss_mb() -> float:
  """Peak resident set size of this process in MiB: ``VmHWM`` of ``/proc/self/status`` on Linux, else
  ``ru_maxrss``. Not ``ru_maxrss`` on Linux: a process started by another keeps, through ``exec``, its parent's
  peak at the fork (a benchmark's worker would report its harness's memory), and the children's figure
  (``RUSAGE_CHILDREN``) includes the parent's size at each fork; a worker reports its own peak instead."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return round(int(line.split()[1]) / 1024, 1)  # kB
  except OSError:
    pass
  kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux (bytes on macOS)
  return round(kb / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def machine() -> dict[str, Any]:
  """The machine a figure was taken on (see the module docstring)."""
  cpus = _cpuinfo()
  first = cpus[0] if cpus else {}
  flags = set((first.get("flags") or first.get("Features") or "").split())
  cores = {(c.get("physical id", "0"), c.get("core id", str(i))) for i, c in enumerate(cpus)}
  mem_gib = None
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemTotal:"):
          mem_gib = round(int(line.split()[1]) / 2**20, 1)
  except OSError:
    pass
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:
    usable = os.cpu_count()
  return dict(
      cpu_model=first.get("model name") or platform.processor() or platform.machine(),
      logical_cpus=os.cpu_count(), physical_cores=len(cores) if cpus else None, usable_cpus=usable,
      vector_extensions=[f for f in VECTOR_FLAGS if f in flags],
      memory_gib=mem_gib, os=platform.platform(), python=platform.python_version())


def pin_threads(n: int) -> dict[str, Any]:
  """Run this process on (the first) ``n`` of its CPUs and ask every thread pool for ``n`` threads.

  Sets the CPU affinity (XLA sizes its CPU thread pool from it; so does PyTorch's default) and
  ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS``; with ``n == 1`` also XLA's flags for
  single-threaded Eigen. Must run before jax or torch is imported. Returns what was set.
  """
  out: dict[str, Any] = dict(threads=n)
  try:
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[:n])
    out["cpu_affinity"] = sorted(os.sched_getaffinity(0))
  except (AttributeError, OSError) as e:  # not Linux: threads only
    out["cpu_affinity"] = f"not set ({type(e).__name__})"
  for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(n)
  if n == 1:
    flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()
  if os.environ.get("XLA_FLAGS"):
    out["XLA_FLAGS"] = os.environ["XLA_FLAGS"]
  return out


def time_calls(fn: Callable[[], Any], repeats: int, warmup: Callable[[], Any] | None = None,
               sync: Callable[[Any], Any] = lambda x: x,
               before: Callable[[], Any] | None = None) -> dict[str, Any]:
  """Time ``sync(fn())``: ``warmup()`` (default: ``fn``) once, untimed in the median, then ``repeats`` calls.

  ``sync`` waits for the result (``jax.block_until_ready`` for JAX; identity for eager PyTorch). Returns wall
  seconds (median, best, all), the warm-up's wall seconds, and the median CPU seconds of the process over all
  its threads (less sensitive than wall time to other jobs on a shared machine). ``before``, if given, runs
  untimed just before each timed call and its results are returned as ``before_all`` (e.g. a probe of the
  machine's speed at that moment, to set each call against).
  """
  t0 = time.perf_counter()
  sync((warmup or fn)())
  warm = time.perf_counter() - t0
  walls, cpus, probes = [], [], []
  for _ in range(repeats):
    if before is not None:
      probes.append(before())
    t0, c0 = time.perf_counter(), time.process_time()
    sync(fn())
    walls.append(time.perf_counter() - t0)
    cpus.append(time.process_time() - c0)
  out = dict(seconds_median=statistics.median(walls), seconds_best=min(walls), seconds_all=walls,
             cpu_seconds_median=statistics.median(cpus), cpu_seconds_all=cpus, warmup_seconds=warm,
             repeats=repeats)
  return dict(out, before_all=probes) if before is not None else out


_ROUNDTRIP: Any = None


def _roundtrip_library():
  """``_roundtrip.c`` built into a temporary directory (once per source) and loaded; None without a compiler."""
  global _ROUNDTRIP
  if _ROUNDTRIP is None:
    _ROUNDTRIP = False
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_roundtrip.c")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler and sys.platform.startswith("linux"):
      with open(source, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
      path = os.path.join(tempfile.gettempdir(), f"scl_roundtrip_{digest}_{os.getuid()}.so")
      if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        built = subprocess.run([compiler, "-O2", "-std=c11", "-shared", "-fPIC", "-pthread", source, "-o", tmp],
                               capture_output=True)
        if built.returncode == 0:
          os.replace(tmp, path)
      if os.path.exists(path):
        library = ctypes.CDLL(path)
        library.scl_roundtrip_ns.restype = ctypes.c_double
        library.scl_roundtrip_ns.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long)
        _ROUNDTRIP = library
  return _ROUNDTRIP or None


def core_roundtrip_ns(rounds: int = 50_000) -> float | None:
  """Nanoseconds for a cache line to go from the first CPU this process may use to the second and back,
  two threads spinning on it (the median of 3 runs of ``rounds`` round trips, about 10-100 ms): the cost of
  one hand-off between two threads. On a virtual machine it moves with where the host places the vCPUs, and
  programs of many small kernels split over both threads (a small network's training steps) move with it,
  where a large product does not. None with fewer than two CPUs, off Linux, or without a C compiler.
  """
  try:
    cpus = sorted(os.sched_getaffinity(0))
  except AttributeError:
    return None
  library = _roundtrip_library() if len(cpus) >= 2 else None
  if library is None:
    return None
  runs = [library.scl_roundtrip_ns(cpus[0], cpus[1], int(rounds)) for _ in range(3)]
  return None if min(runs) < 0 else round(statistics.median(runs), 1)
