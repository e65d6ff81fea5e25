"""scl: self-consuming generative loops with curated (and adversarially curated) data, in JAX.

Public face::

    import scl
    cfg = scl.configs.gaussian8(K=4, lam=1.0, model="gmm", iterations=10)
    result = scl.run(cfg, seed=0)
    result.metrics["expected_reward"]      # [iterations + 1]
    grid = scl.sweep(cfg, K=[1, 2, 4, 8], lam=[0.5, 1.0, float("inf")], seeds=range(4))
    traj, metrics = scl.exact.run(p0, r, K=4, lam=1.0, iterations=20)

Components (data sets, models, rewards, curation rules, attacks, label modes, defences) are looked up by
name in :mod:`scl.registry`; add your own with :func:`scl.register`.
"""

from scl import registry
from scl.registry import register
# Modules that register the built-in components (imported for that effect, and as the public namespace).
from scl import curation
from scl import data
from scl import images
from scl import models
from scl import preferences
from scl import rewards
from scl import attacks
from scl import defences
from scl import configs
from scl import exact
from scl import metrics
from scl import theory
from scl.config import Config, Hyper
from scl.loop import Result, run
from scl.sweeps import SweepResult, exact_sweep, sweep

__all__ = ["Config", "Hyper", "Result", "SweepResult", "attacks", "configs", "curation", "data", "defences",
           "exact", "exact_sweep", "metrics", "models", "preferences", "register", "registry",
           "rewards", "run", "sweep", "theory"]
__version__ = "0.2.0"
