"""Images in the curated loop: benign curation against label-flip attacks on a classifier's reward, fully
synthetic and with real data mixed in (``experiments/images.py``).

Every flat keyword of ``scl.Config`` (``scl.Config.keywords()``) may be set here or on the command line
(``--config.iterations=4``); ``dataset`` picks the builder ``scl.configs.<dataset>`` whose paper defaults the
other fields override. ``variants`` maps a run name to the overrides that distinguish it; all variants run
and are drawn side by side.

Variants (:func:`variants`):
  benign_prob        users curate with the true reward ``5 · P(class 0 | x)`` (Ferbach et al.'s CIFAR reward)
  benign_index       reward ``10 − class`` (Wei & Zhang's), learned by the platform from clean preference
                     pairs (a Bradley–Terry ``Linear(10, 1)`` head on the frozen classifier's logits)
  random, gradient   the same platform, the attacker flipping κ = 0.2 of the pair labels at random or by the
                     bi-level gradient attack (``attack=...``; stealth weight α = 0, as in
                     ``experiments/adversarial.py``): the attacks act on the learned reward
  <name>_real        each of these with real data mixed into every refit, real:synthetic 1:1 (λ = 1)

Binary fields (not passed to ``scl.configs``): ``seed``, ``checkpoint_every``, ``variants``, ``save_samples``
(images per iteration kept in ``samples_<variant>.npz`` and the grids), ``grid_rows`` (iterations shown in the
grids), ``parallel`` (run variants side by side, one per XLA CPU device).

Presets after a colon:
  :digits    scikit-learn's 8×8 digits, sized so all eight variants run within 10 minutes on 2 CPU cores
             (8.5 minutes measured on a shared 2-core machine under load; the residual-MLP flow on the 64
             pixels, 10 iterations; see the README's "What the digits run shows"). The default.
  :quick     a smoke run on digits (tiny pools and networks, 2 iterations): a minute or two on 2 CPU cores,
             nearly all of it compiling the four programs.
  :cifar10, :cifar100   the papers' scale with the U-Net flow (``velocity="unet"``); need the data set
             prepared (``tfds build cifar10 --file_format=array_record``, see BUILD.md) and a GPU.
"""

import ml_collections

from scl.configs import declare_keywords

#: name -> overrides of the fully synthetic variants; each gets a ``<name>_real`` twin with ``lam=real_lam``.
VARIANTS = {
    "benign_prob": {"reward": "class_prob"},
    "benign_index": {"reward": "class_index", "learned_reward": True},
    "random": {"reward": "class_index", "attack": "random", "kappa": 0.2},
    "gradient": {"reward": "class_index", "attack": "gradient", "kappa": 0.2},
}


def variants(names=tuple(VARIANTS), real_lam: float | None = 1.0) -> ml_collections.ConfigDict:
  """The variants ``names`` (fully synthetic) and, unless ``real_lam`` is None, their ``_real`` twins, in
  this order (a ConfigDict that keeps its keys' order)."""
  out = {name: {**VARIANTS[name], "lam": float("inf")} for name in names}
  if real_lam is not None:
    out.update({f"{name}_real": {**VARIANTS[name], "lam": float(real_lam)} for name in names})
  return ml_collections.ConfigDict(out, sort_keys=False)


def get_config(preset: str | None = None):
  preset = preset or "digits"
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.checkpoint_every = 1
  config.save_samples = 100
  config.grid_rows = 4
  config.parallel = True
  config.alpha = 0.0
  if preset in ("digits", "quick"):
    config.dataset = "digits"
    # Measured on 2 CPU cores: p_0 after 3,000 Adam steps samples the 8×8 digits well (Fréchet distance
    # 3.5–4.3 in the classifier's features, precision 0.71–0.74, recall 0.91; after 1,500 steps 4.0 and
    # 0.63; width 128 gives 6.9 and 0.49), and 20 ODE evaluations per sample are as good as 40 (3.5 / 3.4).
    # 300 warm-started refit steps per iteration (not 500) keep the eight variants within the time budget.
    config.iterations = 10
    config.pool_size = 4000
    config.n_keep = 2000
    config.n_eval = 1000
    config.width = 256
    config.depth = 3
    config.init_steps = 3000
    config.train_steps = 300
    config.batch_size = 256
    config.sample_steps = 20
    config.n_pairs = 1000
    config.K_max = 4            # K = 4 candidates per choice; raise K_max with K to try larger K
  if preset == "quick":
    config.iterations = 2
    config.pool_size = 400
    config.n_keep = 200
    config.n_eval = 200
    config.width = 32
    config.depth = 1
    config.init_steps = 100
    config.train_steps = 20
    config.batch_size = 64
    config.sample_steps = 4
    config.n_pairs = 200
    config.save_samples = 200
  elif preset in ("cifar10", "cifar100"):
    config.dataset = preset
    config.velocity = "unet"
    config.width = 64           # U-Net base channels (two resolutions)
    config.depth = 2            # residual blocks per resolution
    config.lr = 2e-4
    config.batch_size = 128
    config.save_samples = 64
  elif preset != "digits":
    raise ValueError(f"unknown preset {preset!r}; choose 'digits', 'quick', 'cifar10' or 'cifar100'")
  config.variants = variants()
  return declare_keywords(config)  # every other scl keyword settable as --config.<keyword>
