"""Gaussian-8 at the papers' scale: a benign fully synthetic loop against one mixed with real data.

Every flat keyword of ``scl.Config`` (``scl.Config.keywords()``) may be set here or overridden on the command line, e.g.
``--config.K=4 --config.model=flow --config.iterations=20``. ``variants`` maps a run name to the overrides
that distinguish it; all variants are run and drawn together (a field every variant sets, such as ``lam``, is
an error at the top level: every variant would replace it).

Presets after a colon (big_vision style): ``--config=experiments/configs/gaussian8.py:demo`` is the README's
main job: the neural flow-matching model at the papers' sample scale (50,000 generated and 25,000 kept per
iteration) with a lighter training budget per iteration, so both runs finish in a few minutes on 2 CPU cores.
``:flow`` is the flow at the equal-work budget of the second paper's DDPM (1,250 Adam steps per iteration).
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
  config.seed = 0
  config.checkpoint_every = 1
  # λ = inf: fully synthetic (the reward is maximised and the model collapses onto the rewarded modes);
  # λ = 0.25: 80% real data in every refit (the loop stays close to p_data, Ferbach Thm 2.3/2.4).
  config.variants = {"synthetic": {"lam": float("inf")}, "mixed": {"lam": 0.25}}
  if preset in ("demo", "flow"):
    config.model = "flow"
    config.lr = 1e-3
    config.batch_size = 1000
  if preset == "demo":
    config.iterations = 8
    config.init_steps = 2000
    config.train_steps = 250
    config.sample_steps = 50
  elif preset == "flow":
    config.init_steps = 3000
    config.train_steps = 1250
    config.sample_steps = 100
  elif preset not in (None, ""):
    raise ValueError(f"unknown preset {preset!r}; choose 'demo' or 'flow'")
  return declare_keywords(config)  # every other scl keyword settable as --config.<keyword>
