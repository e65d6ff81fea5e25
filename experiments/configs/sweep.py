"""A grid of curated loops on Gaussian-8 for ``experiments/sweep.py``.

Fields other than ``grid``, ``seeds``, ``engine``, ``keep_samples``, ``max_chunk`` and ``memory_budget`` are
:class:`scl.Config` keywords of the base config (override any of them: ``--config.iterations=10``).
``grid`` maps a traced hyper-parameter (``K``, ``lam``, ``phi``, ``kappa``, ``alpha``, ``beta``, ``lr``, ``l2``,
``eps``) to its values, e.g. ``--config.grid.K="(1, 2, 4)"`` (any of them, whether the preset sweeps it or
not); ``seeds`` is an int ``n`` (``range(n)``).

Presets after a colon: ``:default`` the K × λ grid of the first paper (GMM; 16 points × 4 seeds);
``:attack`` a κ × φ grid with the random label-flip attack (second paper); ``:exact`` the K × λ grid with
the exact engine on the discretised ring (no seeds); ``:tiny`` a seconds-long smoke test.
"""

import ml_collections

from scl.configs import declare_keywords
from scl.hyper import TRACED_BY_NAME

INF = float("inf")


def get_config(preset: str | None = None):
  config = ml_collections.ConfigDict()
  config.dataset = "gaussian8"
  config.model = "gmm"
  config.iterations = 5
  config.pool_size = 10_000
  config.n_keep = 5_000
  config.n_real = 5_000
  config.n_eval = 2_000
  config.K_max = 8
  config.engine = "mc"              # "mc": scl.run's Monte Carlo loop; "exact": scl.exact.run on the atoms.
  config.seeds = 4
  config.keep_samples = False
  config.max_chunk = 0              # 0: chosen from the memory budget
  config.memory_budget = 0.0        # bytes per device; 0: default (see scl.sweeps)
  config.grid = ml_collections.ConfigDict({"K": (1, 2, 4, 8), "lam": (0.25, 1.0, 4.0, INF)})
  preset = preset or "default"
  if preset == "attack":
    config.K = 4
    config.lam = INF
    config.attack = "random"
    config.grid = ml_collections.ConfigDict({"kappa": (0.0, 0.1, 0.2, 0.4), "phi": (0.0, 0.25, 0.5, 1.0)})
  elif preset == "exact":
    config.engine = "exact"
    config.model = "categorical"
    config.n_atoms = 1024
    config.iterations = 20
    config.seeds = 1
    config.grid = ml_collections.ConfigDict({"K": (1, 2, 4, 8, 16, 64), "lam": (0.1, 0.25, 1.0, 4.0, INF)})
    config.K_max = 64
  elif preset == "tiny":
    config.model = "categorical"
    config.n_atoms = 64
    config.pool_size, config.n_keep, config.n_real, config.n_eval = 1000, 500, 500, 500
    config.iterations = 2
    config.seeds = 2
    config.K_max = 4
    config.grid = ml_collections.ConfigDict({"K": (1, 2, 4), "lam": (1.0, INF)})
  elif preset != "default":
    raise ValueError(f"unknown preset {preset!r}; choose default, attack, exact or tiny")
  for name in TRACED_BY_NAME:  # every traced field can be a grid axis: --config.grid.alpha="(0.1, 0.5)"
    if name not in config.grid:
      config.grid[name] = ml_collections.config_dict.placeholder(tuple)
  return declare_keywords(config)  # every other scl keyword settable as --config.<keyword>
