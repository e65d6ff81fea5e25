"""Load an experiment binary (or its config file) as a module, for the binaries' tests.

Each binary defines absl flags (``--config``, ``--workdir``, ...) when it is imported, and absl refuses a flag
defined twice. Several binaries' tests can share a pytest worker, so the flags a previously loaded binary
defined are removed before the next one is loaded; the tests call the binaries' library-facing functions, not
their flags.
"""

from __future__ import annotations

import importlib.util
import os

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFINED: set[str] = set()   # flags defined by binaries loaded through this module

#: The scale of the attack binaries' tests: one iteration, 400 samples drawn (200 kept), 400 real and 400
#: evaluation samples, 250 preference pairs (``floor(0.2 * 250) = 50`` flips at κ = 0.2).
TINY = dict(iterations=1, pool_size=400, n_keep=200, n_real=400, n_eval=400, n_pairs=250)


def tiny(config, **fields):
  """``config`` (an ml_collections ConfigDict) with :data:`TINY`'s fields, then ``fields``, set in place."""
  for name, value in {**TINY, **fields}.items():
    setattr(config, name, value)
  return config


def load(name: str, *path: str):
  """The module at ``ROOT/path`` under ``name``."""
  for flag in list(_DEFINED):
    if flag in flags.FLAGS:
      delattr(flags.FLAGS, flag)
  _DEFINED.clear()
  before = set(flags.FLAGS)
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, *path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  _DEFINED.update(set(flags.FLAGS) - before)
  return module
