"""Defences against label-flip attacks on Gaussian-8: every (attack, defence) pair, fully synthetic and with
real data (real:synthetic 1:1), plus honest heterogeneous users (a minority with its own taste, no attacker).

The platform fits its reward (2→64→1 MLP) from ``n_pairs`` preference pairs per iteration with the defence
``defence`` at strength ``eps[defence]`` (ε, traced; its meaning per defence is in :mod:`scl.defences`) and
curates with it; the attacker flips ``κ = 0.2`` of the labels. ``gradient_adaptive`` is the gradient attack
of an attacker who differentiates through the defended fit. Every (setting, attack, defence) cell runs
``range(seeds)`` seeds in one ``scl.sweep`` call.

Binary fields (not passed to ``scl.configs``): ``seeds``, ``attacks``, ``defences``, ``eps`` (defence -> ε),
``settings`` (name -> λ), ``minority`` (``share``, ``target``; ``share = 0`` skips the scenario).

Presets:
  (default)  the paper-scale Gaussian-8 run: K = 4, 50,000 drawn / 25,000 kept, 2,000 pairs, α = 0,
             10 iterations, 6 attacks × 6 defences × 2 settings, 3 seeds; the minority scenario with 30% of the
             users preferring the modes whose reward is about -7.
  :quick     a smoke run (a few minutes on 2 CPU cores): small pools, 3 iterations, 3 seeds, 3 attacks ×
             3 defences, fully synthetic only.
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
  config.attacks = ("none", "random", "dist", "top", "gradient", "gradient_adaptive")
  config.defences = ("none", "label_smoothing", "robust_bt", "outlier", "ensemble_filter", "knn_relabel")
  # ε per defence: smoothing rate; the true flip rate κ; outlier: label probability 1/2 (λ_o = 1/2); the
  # ensemble drops labels it gives probability < 0.4; k-NN relabels when > 55% of 10 neighbours disagree.
  config.eps = {"none": 0.0, "label_smoothing": 0.2, "robust_bt": 0.2, "outlier": 0.5,
                "ensemble_filter": 0.4, "knn_relabel": 0.45}
  # real:synthetic ratio -> λ (weight of synthetic against real data); "synthetic" is λ = inf.
  config.settings = {"synthetic": float("inf"), "real 1:1": 1.0}
  # Honest heterogeneous users: `share` of the pairs are labelled by a minority preferring rewards near
  # `target` (-7: the two modes next to the worst one); run with every defence, no attacker, fully synthetic.
  config.minority = ml_collections.ConfigDict({"share": 0.3, "target": -7.0})
  if preset == "quick":
    config.iterations = 3
    config.pool_size = 2_000
    config.n_keep = 1_000
    config.n_real = 1_000
    config.n_eval = 1_000
    config.n_pairs = 300
    config.seeds = 3
    config.attacks = ("none", "dist", "gradient_adaptive")
    config.defences = ("none", "robust_bt", "outlier")
    config.settings = {"synthetic": float("inf")}
  elif preset not in (None, ""):
    raise ValueError(f"unknown preset {preset!r}; choose 'quick'")
  return declare_keywords(config)  # every other scl keyword settable as --config.<keyword>
