"""Wei & Zhang's experiment on Gaussian-8: benign curation against random, heuristic and gradient
label-flip attacks, fully synthetic and mixed with real data (real:synthetic 1:1, 4:1, 1:4).

The platform learns a Bradley–Terry reward (2→64→1 MLP) from ``n_pairs`` preference pairs per iteration and
curates with it; the attacker flips ``κ = 0.2`` of the labels. ``alpha`` is the attacker's stealth weight.
Presets: ``:quick`` (smaller pools and fewer iterations, for a smoke run).
"""

import ml_collections


def get_config(preset: str | None = None):
  config = ml_collections.ConfigDict()
  config.dataset = "gaussian8"
  config.model = "gmm"
  config.iterations = 10
  config.K = 4
  config.pool_size = 50_000
  config.n_keep = 25_000
  config.n_pairs = 2_000
  config.learned_reward = True
  config.kappa = 0.2
  config.alpha = 0.0
  config.seed = 0
  config.attacks = ("none", "random", "dist", "top", "gradient")
  # real:synthetic ratio -> λ (weight of synthetic against real data); "synthetic" is λ = inf.
  config.settings = {"synthetic": float("inf"), "real 1:1": 1.0, "real 4:1": 0.25, "real 1:4": 4.0}
  if preset == "quick":
    config.iterations = 4
    config.pool_size = 10_000
    config.n_keep = 5_000
    config.n_real = 5_000
    config.n_pairs = 500
    config.attacks = ("none", "random", "gradient")
    config.settings = {"synthetic": float("inf"), "real 1:1": 1.0}
  elif preset not in (None, ""):
    raise ValueError(f"unknown preset {preset!r}; choose 'quick'")
  return config
