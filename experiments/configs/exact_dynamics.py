"""Exact population dynamics (``scl.exact_sweep``) on two finite supports, for ``experiments/exact_dynamics.py``.

Fields (override any on the command line, e.g. ``--config.iterations=10 --config.K="(1, 2, inf)"``):
  iterations   loop iterations ``T``
  n_atoms      atoms of the discretised Gaussian-8 ring (``scl.configs.gaussian8(model="categorical")``)
  data_seed    seed of those atoms
  K, lam       the K × λ grid (``inf``: K → ∞ / fully synthetic); a scalar is a one-value axis. Keep a
               point with 1 < K < inf and λ (K - 1) < 1 to see Ferbach Theorem 2.4
  n_phi        points of the φ sweep, ``linspace(0, 1, n_phi)``, with ``r~ = -r`` and λ = ∞
  phi_K        K of the φ sweep

Presets after a colon: ``:default`` (the grid above), ``:quick`` (a smoke run of a few seconds).
"""

import ml_collections

INF = float("inf")


def get_config(preset: str | None = None):
  config = ml_collections.ConfigDict()
  config.iterations = 20
  config.n_atoms = 400
  config.data_seed = 0
  config.K = (1.0, 2.0, 4.0, 16.0, INF)
  config.lam = (INF, 4.0, 1.0, 0.25)
  config.n_phi = 11
  config.phi_K = 4.0
  preset = preset or "default"
  if preset == "quick":
    config.iterations = 4
    config.n_atoms = 64
    config.K = (1.0, 2.0, INF)
    config.lam = (INF, 0.5)    # K = 2, λ = 0.5: λ (K - 1) < 1, where Ferbach Thm 2.4 applies
    config.n_phi = 3
  elif preset != "default":
    raise ValueError(f"unknown preset {preset!r}; choose default or quick")
  return config
