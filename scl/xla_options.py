"""Per-program XLA compiler options: 512-bit vectors on CPUs that have them.

XLA's CPU compiler emits 256-bit vector code by default, even where the CPU has AVX-512. On a CPU that
executes 512-bit instructions at full width that leaves arithmetic on the table: on a 2-core AMD EPYC whose
jitted ``2048³`` matrix product reaches 405 GFLOP/s, ``xla_cpu_prefer_vector_width=512`` made the flow's
training step 1.26x faster (1.47 against 1.85 ms at batch 1,000, width 128) and one Bradley–Terry
loss-and-gradient evaluation 1.1-1.2x faster (1,000 to 20,000 pairs, 2 -> 64 -> 1). On a CPU without
AVX-512 XLA ignores the option.

Nothing in scl sets it by default: a program compiled with it differs from the default one in the last bits
of its floats (the order of vectorised sums), and scl's entry points promise the same numbers as the same
function jitted by hand (:func:`scl.run` and :func:`scl.sweep` agree bit for bit). Opt in per program::

    jax.jit(fn, compiler_options=scl.compiler_options())   # top-level jit only, not inside another

or for the whole process with ``XLA_FLAGS=--xla_cpu_prefer_vector_width=512`` (set before jax starts).
``benchmarks/loop.py`` reports the flow's fit and draw both ways (``with_compiler_options``).
"""

from __future__ import annotations

import functools
import os

import jax

#: The option set on CPUs with AVX-512 (XLA's ``DebugOptions`` field).
VECTOR_WIDTH_OPTION = "xla_cpu_prefer_vector_width"


def _cpu_flags() -> frozenset[str]:
  """The CPU's feature flags from ``/proc/cpuinfo`` (Linux); empty where that file is missing."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return frozenset()


@functools.lru_cache(maxsize=None)
def _options(backend: str, xla_flags: str, has_avx512: bool) -> tuple[tuple[str, int], ...]:
  if backend != "cpu" or VECTOR_WIDTH_OPTION in xla_flags or not has_avx512:
    return ()
  return ((VECTOR_WIDTH_OPTION, 512),)


def compiler_options() -> dict[str, int]:
  """The options for ``jax.jit(..., compiler_options=...)``: ``{"xla_cpu_prefer_vector_width": 512}`` when
  the default backend is the CPU, the CPU has AVX-512 (``avx512f``) and ``XLA_FLAGS`` does not set the vector
  width; ``{}`` otherwise (a GPU or TPU, or a CPU without AVX-512).

  Reads the default backend, so call it when compiling, not at import.
  """
  return dict(_options(jax.default_backend(), os.environ.get("XLA_FLAGS", ""), "avx512f" in _cpu_flags()))
