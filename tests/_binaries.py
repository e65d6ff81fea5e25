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
