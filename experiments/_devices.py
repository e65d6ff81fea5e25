"""Every CPU core an XLA device, for the experiment binaries; stdlib only, used before JAX is imported.

XLA:CPU runs one loop program on about one core, so on a CPU-only machine a binary that has independent
programs to run (a sweep's grid points, a cell's seeds, image variants) lays them over the cores as separate
XLA devices: ``--xla_force_host_platform_device_count`` set in ``XLA_FLAGS`` before JAX initialises its
backends. An explicit device count in ``XLA_FLAGS``, or ``SCL_CPU_DEVICES=1``, overrides it; accelerators
are unaffected. The binaries call :func:`cpu_cores_as_devices` only when run as programs, so importing one
(the tests do) changes nothing.
"""

from __future__ import annotations

import os


def cpu_cores_as_devices() -> int:
  """Ask XLA for one CPU device per core (or ``SCL_CPU_DEVICES``); returns the count asked for (1: none).

  Must run before ``import jax``. Leaves ``XLA_FLAGS`` alone when it already sets a device count.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" in flags:
    return 1
  count = int(os.environ.get("SCL_CPU_DEVICES", os.cpu_count() or 1))
  if count > 1:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
  return count
