"""scl: self-consuming generative loops with curated (and adversarially curated) data, in JAX.

Public face::

    import scl
    cfg = scl.configs.gaussian8(K=4, lam=1.0, model="gmm", iterations=10)
    result = scl.run(cfg, seed=0)
    result.metrics["expected_reward"]      # [iterations + 1]
    grid = scl.sweep(cfg, K=[1, 2, 4, 8], lam=[0.5, 1.0, float("inf")], seeds=range(4))
"""

from scl import configs
from scl import curation
from scl import data
from scl import exact
from scl import metrics
from scl import rewards
from scl import theory
from scl.loop import Result, make_run, run
from scl.sweeps import SweepResult, exact_sweep, sweep
from scl.types import Config, Hyper

__all__ = ["configs", "curation", "data", "exact", "metrics", "rewards", "theory", "Config", "Hyper", "Result",
           "SweepResult", "exact_sweep", "make_run", "run", "sweep"]
__version__ = "0.1.0"
