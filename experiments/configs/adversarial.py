"""Wei & Zhang's experiment on Gaussian-8: benign curation against random, heuristic and gradient
label-flip attacks, fully synthetic and mixed with real data (real:synthetic 1:1, 4:1, 1:4).

The platform learns a Bradley–Terry reward (2→64→1 MLP) from ``n_pairs`` preference pairs per iteration and
curates with it; the attacker flips ``κ = 0.2`` of the labels. ``alpha`` is the attacker's stealth weight.
Every (setting, attack, recipe) cell runs ``seeds`` seeds (``range(seeds)``) in one ``scl.sweep`` call; the
gradient attack runs once per recipe in ``recipes`` (``"paper"``: the paper's plain relaxation; ``"robust"``:
scl's, which may keep the ``dist`` heuristic's flips), the other attacks once.

Binary fields (not passed to ``scl.configs``): ``seeds``, ``attacks``, ``recipes``, ``settings`` (name -> λ).

Presets:
  (default)   the paper-scale Gaussian-8 run: K-choice curation (K = 4), 50,000 drawn / 25,000 kept,
              2,000 pairs, α = 0, 10 iterations, four real-data settings, 3 seeds.
  :quick      a smoke run (seconds to a minute): small pools, 2 iterations, 2 seeds, three attacks.
  :code_toy   the second paper's public code's toy run: Gaussian-8 scaled by 1.414, Luce-pool curation
              keeping half of 50,000 samples, 50,000 pairs, κ = 0.2, α = 0.8 with the code's weighting
              α Cov + (1 − α) dist, 10 iterations, fully synthetic, 3 seeds (GMM in place of its DDPM).
"""

import ml_collections

from scl.configs import declare_keywords


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
  config.seeds = 3
  config.attacks = ("none", "random", "dist", "top", "gradient")
  config.recipes = ("paper", "robust")
  # real:synthetic ratio -> λ (weight of synthetic against real data); "synthetic" is λ = inf.
  config.settings = {"synthetic": float("inf"), "real 1:1": 1.0, "real 4:1": 0.25, "real 1:4": 4.0}
  if preset == "quick":
    config.iterations = 2
    config.pool_size = 2_000
    config.n_keep = 1_000
    config.n_real = 1_000
    config.n_eval = 1_000
    config.n_pairs = 300
    config.seeds = 2
    config.attacks = ("none", "random", "gradient")
    config.settings = {"synthetic": float("inf"), "real 1:1": 1.0}
  elif preset == "code_toy":
    config.ring_scale = 1.414
    config.curation = "luce_pool"
    config.beta = 0.5          # keep half of the pool
    config.pool_size = 50_000
    config.n_pairs = 50_000
    config.kappa = 0.2
    config.alpha = 0.8
    config.attack_weighting = "code"
    config.iterations = 10
    config.seeds = 3
    config.settings = {"synthetic": float("inf")}
  elif preset not in (None, ""):
    raise ValueError(f"unknown preset {preset!r}; choose 'quick' or 'code_toy'")
  return declare_keywords(config)  # every other scl keyword settable as --config.<keyword>
