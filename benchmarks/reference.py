"""scl against the second paper's public PyTorch code, side by side, on one machine; prints one JSON object.

    python benchmarks/reference.py --repo third_party/Adversarial-Curation --ref-python /path/to/torch/python
    python benchmarks/reference.py                     # scl's absolute figures only (no reference)
    python benchmarks/reference.py --repo ... --quick  # smoke run: 100 pairs; 20 Adam steps at batch 100;
                                                       # 1,000 samples at 10 network evaluations

``--repo`` is a clone of ``osu-srml/Adversarial-Curation`` (the code of Wei & Zhang, ICML 2025); nothing of it
is copied into scl. Its side runs in the interpreter ``--ref-python`` (default: this one), which needs
``torch`` (``pip install -e '.[reference]'`` pins the version compared) plus numpy, scikit-learn, scipy,
matplotlib and tqdm, which that code imports. Each figure is measured in a fresh worker process, started by
this script as ``python benchmarks/reference.py --worker ...``, so that its peak resident memory
(``ru_maxrss``) is its own. Both sides read the same data, which this script draws once with numpy: the
Gaussian-8 ring (8 modes, radius 2, std 0.02), the true reward ``-10 max(|x - (2, 0)| - 3, 0)``, and for
``n`` pairs a pool of ``2n`` ring samples split into ``x = pool[:n]``, ``z = pool[n:]`` with deterministic
labels ``o = 1`` if ``r(z) > r(x)``, ``0`` if lower, ``0.5`` on a tie (the reference's convention).

Threads: every worker first restricts itself to ``--threads`` CPUs (default: up to 2) with
``sched_setaffinity`` (XLA sizes its CPU thread pool from the affinity; ``OMP/MKL_NUM_THREADS`` are set to
match) and the reference worker calls ``torch.set_num_threads(--threads)``; the JSON states what was set.

Repeats: every figure is the median of ``--repeats`` timed calls (scl's attack: ``--scl-attack-repeats``,
default 10) after one untimed warm-up call. With ``--repo`` scl's worker runs twice, just before and just after
the reference's, and its figure is the median over both workers' calls (each worker's median is kept as
``bracket``): the host's speed drifts from minute to minute, and the reference's calls take minutes. The scl
attack takes a tenth of a second and varies by up to a third from call to call on a shared 2-core virtual
machine (the reference's minute-long calls vary by about 2%), so its median is taken over more calls; the JSON
keeps every call's time. scl's attack is also timed from the attacker's ``θ`` fitted from
``--scl-attack-inits`` network initialisations (``over_inits``; the JSON's ``ratio_..._median_over_inits``):
its work depends on ``θ`` by chance, the reference's does not. scl's programs are compiled ahead of time
(``jit(...).lower(...).compile()``, reported as ``compile_seconds``) and the warm-up is one run of the compiled
program at full size. PyTorch runs eagerly, so its warm-up is a run of the same code at a small size (it warms
imports, allocator and oneDNN primitive caches, not a compiler).

What is timed
-------------
(1) Gradient label-flip attack, ``n`` in ``--attack-pairs`` (1,000 and 4,000), 5 outer steps,
    ``κ = 0.2`` (``floor(0.2 n)`` flips), ``α = 0.8``, reward network 2 -> 64 -> 1.

    * reference: one call of ``malicious.attack_white(pairs.npy, theta.pth, gen_path, B=floor(0.2 n),
      alpha1=0.8, alpha2=0.2)`` — the 2-D (toy) attack of the repository, with its defaults: ``epochs=5``
      outer steps, and in each a fresh ``reward.RewardModel`` (``Linear(2, 64)``-ReLU-``Linear(64, 1)``)
      trained by ``train_reward_model_nosave`` (its defaults: 10 epochs of one Adam step per pair, lr 1e-4;
      the ``epochs``/``lr`` passed down by ``attack_white`` are ignored by that function), covariance and
      distance gradients, the dense 257 x 257 Hessian from ``torch.autograd.functional.hessian`` over a
      Python sum of per-pair losses, its ``pinv``, and the ``[P, n]`` mixed derivative; then top-k and the
      save of the flipped pairs (``np.save`` of ``n`` pairs: negligible). ``alpha1 = α``, ``alpha2 = 1 - α``
      as ``retrain_ddpm.py`` passes them. The attacker's reward ``θ`` (``theta.pth``) is trained beforehand
      with the repository's ``reward.train_reward_model`` (10 epochs, one Adam step per pair) and timed
      separately (``fit_theta_seconds``). Warm-up: the same attack on 20 pairs.
    * scl: ``scl.attacks.gradient_attack(x, z, o, pool, θ, net.apply, κ, α, l2=1e-3, steps=5)`` with the
      library's solver defaults (``scl.attacks.GRADIENT_ATTACK_FIT``) and ``net = scl.reward_model
      .mlp_reward((64,))`` (2 -> 64 -> 1, SiLU), as ``benchmarks/attack.py`` runs it; ``θ`` is fitted first by
      ``scl.reward_model.fit_reward`` (timed separately, one call after compilation). ``Cov`` and ``dist`` are
      estimated on the pool of the pairs' ``2n`` samples, as the reference does on the pairs. ``refits``
      reports the L-BFGS iterations and loss-and-gradient evaluations of each of its re-fits.

(2) DDPM / flow retrain: 1,250 Adam steps at batch 1,000 (50 epochs of 25,000 samples).

    * reference: what ``ddpm-torch/train_toy.py --use-dataset`` (as ``retrain_ddpm.py`` calls it) does, in
      process: its ``load_generated_data`` (a shuffling ``DataLoader``, batch 1,000), its default network
      ``Decoder(2, mid_features=128, num_temporal_layers=3)``, ``GaussianDiffusion`` (linear betas 1e-3 ..
      0.2, 100 steps, eps-prediction, MSE), ``Adam(lr=1e-3)``, and ``toy.Trainer.train`` for 50 epochs with no
      evaluator and no checkpoint — so the end-of-training evaluation of the script (which draws another
      2 x 25,000 samples) and its file writes are not counted here (``--ref-scripts`` counts them). A fresh
      network per call, as the script trains from scratch. Warm-up: 5 steps.
    * scl: ``make_flow(width=128, depth=3, train_steps=1250, batch_size=1000).fit`` on the same 25,000
      samples with uniform weights (lr 1e-3); one ``lax.scan`` of Adam steps, minibatches drawn inside.

(3) Sampling 50,000 points with 100 network evaluations each.

    * reference: ``generate_toy.py``'s loop, in process: 50 batches of 1,000, each ``diffusion.p_sample``
      (100 ancestral steps, ``torch.inference_mode``), with the network trained in (2); ``np.save`` and the
      scatter plot are not counted. Warm-up: one batch.
    * scl: ``make_flow(..., sample_steps=100).sample`` (50 explicit-midpoint steps = 100 NFE; chunks of
      8,192 rows), with the params fitted in (2).

Equal work is equal steps, batch sizes, sample counts and network evaluations, not equal FLOPs: the
reference's network is heavier per evaluation (each of its 3 "temporal layers" has three 128 x 128 matrix
products plus two LayerNorms, and the three are one shared module applied three times). The JSON gives each
side's multiply-accumulates per row per network evaluation (``macs_per_row_per_eval``, counted from the
layers actually applied) and a FLOP-normalised ratio beside the plain one. The attacks are equal in
settings (pairs, outer steps, network, budget), not in algorithm: see ``caveats`` in the JSON.

``--ref-scripts`` also runs ``train_toy.py`` and ``generate_toy.py`` as separate processes in a temporary
directory, as ``retrain_ddpm.py`` does (``--device=cpu``), and reports their end-to-end wall time (interpreter
start, imports, the script's own evaluation and file writes included); the warm-up there is one ``--help``
run of each script (imports only).

How the reference is loaded: its ``ddpm_torch/__init__.py`` imports the image-model code (torchvision,
datasets, FID); the worker registers ``ddpm_torch`` as a bare package so that only the toy modules load,
and where torchvision cannot be imported (CPU-only torch without a matching torchvision wheel) it puts a
placeholder ``torchvision.utils.save_image`` that raises if called — the toy path never calls it. For the
script runs ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set, since ``generate_toy.py`` loads the checkpoint
that ``train_toy.py`` wrote (which holds numpy scalars) with ``torch.load``'s default, ``weights_only=True``
since torch 2.6.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402  (stdlib only: importable from the reference's interpreter too)

RESULT_TAG = "@@RESULT "
KAPPA, ALPHA, L2, OUTER_STEPS, HIDDEN = 0.2, 0.8, 1e-3, 5, 64

FULL = dict(attack_pairs=[1000, 4000], n_data=25_000, batch_size=1000, epochs=50, n_samples=50_000, nfe=100,
            sample_batch=1000, width=128, depth=3, lr=1e-3, repeats=3)
QUICK = dict(attack_pairs=[100], n_data=2000, batch_size=100, epochs=1, n_samples=1000, nfe=10,
             sample_batch=1000, width=128, depth=3, lr=1e-3, repeats=2)


# ------------------------------------------------------------------------------------------------ data


def ring(rng, m, radius=2.0, std=0.02, modes=8):
  import numpy as np
  angle = 2 * np.pi * rng.integers(0, modes, m) / modes
  return (radius * np.stack([np.cos(angle), np.sin(angle)], -1)
          + std * rng.standard_normal((m, 2))).astype(np.float32)


def true_reward(x):
  import numpy as np
  return -10.0 * np.maximum(np.linalg.norm(x - np.array([2.0, 0.0]), axis=-1) - 3.0, 0.0)


def attack_pairs(rng, n):
  """The attack's instance: a pool of ``2 n`` ring samples, its halves as the pairs ``(x, z)``, and labels by the
  true reward (``o = 1`` where ``z`` is better, 1/2 on ties); ``(x, z, o, pool)``."""
  import numpy as np
  pool = ring(rng, 2 * n)
  x, z = pool[:n], pool[n:]
  rx, rz = true_reward(x), true_reward(z)
  o = np.where(rz > rx, 1.0, np.where(rz < rx, 0.0, 0.5)).astype(np.float32)
  return x, z, o, pool


def write_data(tmp, settings):
  """Pairs for each n and the ring the generative models are fitted on, as files both sides read."""
  import numpy as np
  rng = np.random.default_rng(0)
  files = {}
  for n in settings["attack_pairs"]:
    x, z, o, pool = attack_pairs(rng, n)
    files[f"pairs_{n}"] = os.path.join(tmp, f"pairs_{n}.npz")
    np.savez(files[f"pairs_{n}"], x=x, z=z, o=o, pool=pool)
  os.makedirs(os.path.join(tmp, "ring"), exist_ok=True)
  files["ring"] = os.path.join(tmp, "ring", "samples.npy")  # a folder of .npy files, as train_toy.py reads
  np.save(files["ring"], ring(rng, settings["n_data"]))
  return files


# ------------------------------------------------------------------------------------------ scl worker


def scl_attack(spec):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from scl import attacks, reward_model as rm
  import attack as attack_benchmark  # benchmarks/attack.py: the same report of the attack's re-fits

  d = np.load(spec["pairs"])
  x, z, o, pool = (jnp.asarray(d[k]) for k in ("x", "z", "o", "pool"))
  n = int(o.shape[0])
  net = rm.mlp_reward((HIDDEN,))
  p0 = net.init(jax.random.key(2), x[:1])
  l2, kappa, alpha = jnp.float32(L2), jnp.float32(KAPPA), jnp.float32(ALPHA)
  # data as arguments, not closed over (as inside scl.run; XLA does not constant-fold them)
  fit = jax.jit(lambda p, x, z, o: rm.fit_reward(p, net.apply, x, z, o, l2, return_info=True))
  t0 = time.perf_counter()
  fit_c = fit.lower(p0, x, z, o).compile()
  fit_compile = time.perf_counter() - t0
  t0 = time.perf_counter()
  theta, info = jax.block_until_ready(fit_c(p0, x, z, o))
  fit_s = time.perf_counter() - t0

  run = jax.jit(lambda x, z, o, pool, theta, kappa, alpha: attacks.gradient_attack(
      x, z, o, pool, theta, net.apply, kappa, alpha, l2, steps=OUTER_STEPS, return_info=True))
  args = (x, z, o, pool, theta, kappa, alpha)
  t0 = time.perf_counter()
  compiled = run.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  last = []
  timing = _machine.time_calls(lambda: last.append(compiled(*args)) or last[-1], spec["attack_repeats"],
                               sync=jax.block_until_ready)
  _, mask, work = last[-1]
  over_inits = _attack_over_inits(spec, net, fit_c, compiled, args, timing, work)
  return dict(timing, compile_seconds=compile_s, over_inits=over_inits, fit_theta_seconds=fit_s,
              fit_theta_compile_seconds=fit_compile,
              fit_theta_iters=int(info.num_iters), flips=int(mask.sum()), n_pairs=n,
              refits=attack_benchmark.refit_work(work),
              n_params=int(sum(a.size for a in jax.tree_util.tree_leaves(p0))),
              attack_fit_kwargs=dict(attacks.GRADIENT_ATTACK_FIT), device=str(jax.devices()[0]),
              fused_kernel="scl_bt_mlp1" in compiled.as_text(),  # scl/_native.py's loss kernel in the program
              lbfgs_kernel="scl_lbfgs_step" in compiled.as_text(),  # and its L-BFGS iteration
              versions=dict(jax=jax.__version__, numpy=np.__version__))


def _attack_over_inits(spec, net, fit_c, compiled, args, timing, work):
  """The same attack from the attacker's ``θ`` fitted from ``spec["attack_inits"]`` network initialisations
  (keys 2, 3, ...; key 2 is the instance timed above): each call's median over ``max(3, attack_repeats // 2)``
  calls and its loss-and-gradient evaluations. The attack's work depends on ``θ`` (its re-fits stop at a
  tolerance, and which flips it reaches is chaotic at that level: 320-680 evaluations over 48 initialisations
  at 1,000 pairs), while the reference's is fixed (10 n Adam steps and a dense Hessian per outer step), so one
  instance is one draw; ``seconds_all`` holds the per-initialisation medians and ``seconds_median`` their
  median."""
  import jax
  import attack as attack_benchmark

  x, z, o = args[:3]
  medians, evals = [timing["seconds_median"]], [attack_benchmark.refit_work(work)["total_evals"]]
  for key in range(3, 2 + spec.get("attack_inits", 8)):
    theta, _ = jax.block_until_ready(fit_c(net.init(jax.random.key(key), x[:1]), x, z, o))
    run_args = args[:4] + (theta,) + args[5:]
    last = []
    t = _machine.time_calls(lambda: last.append(compiled(*run_args)) or last[-1],
                            max(3, spec["attack_repeats"] // 2), sync=jax.block_until_ready)
    medians.append(t["seconds_median"])
    evals.append(attack_benchmark.refit_work(last[-1][2])["total_evals"])
  return dict(inits=len(medians), seconds_all=medians, seconds_median=statistics.median(medians),
              total_evals=evals)


def scl_retrain(spec):
  from typing import NamedTuple

  import jax
  import jax.numpy as jnp
  import numpy as np
  from scl.models.flow import make_flow

  class Hyper(NamedTuple):  # the only field make_flow's fit reads
    lr: jax.Array

  s = spec["settings"]
  x = jnp.asarray(np.load(spec["ring"]))
  n = x.shape[0]
  w = jnp.full((n,), 1.0 / n, jnp.float32)
  steps = s["epochs"] * (n // s["batch_size"])
  # init_steps only sets the starting params of the timed fit: its cost does not depend on them
  model = make_flow(width=s["width"], depth=s["depth"], train_steps=steps, init_steps=10,
                    batch_size=s["batch_size"], sample_steps=s["nfe"])
  hyper = Hyper(lr=jnp.float32(s["lr"]))
  key = jax.random.PRNGKey(2)
  params = jax.block_until_ready(jax.jit(model.init)(key, x, w))

  t0 = time.perf_counter()
  fit_c = jax.jit(model.fit).lower(params, key, x, w, hyper).compile()
  fit_compile = time.perf_counter() - t0
  fit_t = _machine.time_calls(lambda: fit_c(params, key, x, w, hyper), spec["repeats"],
                              sync=jax.block_until_ready)
  fitted = fit_c(params, key, x, w, hyper)

  t0 = time.perf_counter()
  sample_c = jax.jit(model.sample, static_argnums=2).lower(fitted, key, s["n_samples"]).compile()
  sample_compile = time.perf_counter() - t0
  sample_t = _machine.time_calls(lambda: sample_c(fitted, key), spec["repeats"], sync=jax.block_until_ready)
  # every Dense kernel of the velocity field is applied once per evaluation
  kernels = [a for path, a in jax.tree_util.tree_leaves_with_path(fitted["net"])
             if "kernel" in jax.tree_util.keystr(path)]
  macs = int(sum(k.size for k in kernels))
  return dict(
      network=f"VelocityMLP: Dense(2+{2 * 8 + 1} time features -> {s['width']}), {s['depth']} residual blocks "
              f"h + silu(Dense({s['width']})(h)), Dense(2)",
      macs_per_row_per_eval=macs, train_steps=steps, batch_size=s["batch_size"], n_data=int(n),
      n_samples=s["n_samples"], nfe=s["nfe"], solver="midpoint", sample_chunk=8192,
      train=dict(fit_t, compile_seconds=fit_compile),
      sample=dict(sample_t, compile_seconds=sample_compile),
      device=str(jax.devices()[0]), versions=dict(jax=jax.__version__, numpy=np.__version__))


# ------------------------------------------------------------------------------------ reference worker


def _load_ddpm_torch(repo):
  """Import the reference's toy DDPM modules without its image-model package ``__init__`` (docstring)."""
  import types
  root = os.path.join(repo, "ddpm-torch")
  if root not in sys.path:
    sys.path.insert(0, root)
  placeholder = False
  try:
    import torchvision  # noqa: F401
  except Exception:  # noqa: BLE001 — absent, or a wheel built for another torch
    for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
      del sys.modules[k]
    tv, tvu = types.ModuleType("torchvision"), types.ModuleType("torchvision.utils")

    def save_image(*args, **kwargs):
      raise RuntimeError("placeholder torchvision.utils.save_image (torchvision could not be imported)")

    tvu.save_image = save_image
    tv.utils = tvu
    sys.modules["torchvision"], sys.modules["torchvision.utils"] = tv, tvu
    placeholder = True
  if "ddpm_torch" not in sys.modules:
    pkg = types.ModuleType("ddpm_torch")
    pkg.__path__ = [os.path.join(root, "ddpm_torch")]
    sys.modules["ddpm_torch"] = pkg
  import ddpm_torch.toy  # noqa: F401
  return dict(ddpm_torch_package_init_bypassed=True, torchvision_placeholder=placeholder)


def _torch_threads(n):
  import torch
  torch.set_num_threads(n)
  return dict(torch_num_threads=torch.get_num_threads(), torch_interop_threads=torch.get_num_interop_threads())


def _pairs_file(path, pairs, n=None):
  """The reference's pair format: an object array of ``(x_i, y_i, o_i)`` tuples saved with ``np.save``."""
  import numpy as np
  d = np.load(pairs)
  n = n or len(d["o"])
  arr = np.empty(n, dtype=object)
  for i in range(n):
    arr[i] = (d["x"][i], d["z"][i], float(d["o"][i]))
  np.save(path, arr, allow_pickle=True)
  return path


def ref_attack(spec):
  import contextlib

  import numpy as np
  import torch

  repo = spec["repo"]
  sys.path.insert(0, repo)
  threads = _torch_threads(spec["threads"])
  import malicious
  import reward

  tmp = spec["tmp"]
  n = int(len(np.load(spec["pairs"])["o"]))
  budget = int(KAPPA * n)
  pairs = _pairs_file(os.path.join(tmp, "pairs.npy"), spec["pairs"])
  small = _pairs_file(os.path.join(tmp, "pairs_small.npy"), spec["pairs"], n=min(20, n))
  theta = os.path.join(tmp, "theta.pth")
  gen = os.path.join(tmp, "gen", "samples")  # attack_white writes into dirname(gen)/malicious_reward
  os.makedirs(os.path.dirname(gen), exist_ok=True)
  log = open(os.path.join(tmp, "reference_stdout.log"), "w")
  torch.manual_seed(0)
  with contextlib.redirect_stdout(log):
    t0 = time.perf_counter()
    reward.train_reward_model(pairs, theta)  # the attacker's θ, as retrain_ddpm.py's train_reward does
    fit_s = time.perf_counter() - t0
    timing = _machine.time_calls(
        lambda: malicious.attack_white(pairs, theta, gen, budget, ALPHA, 1 - ALPHA), spec["repeats"],
        warmup=lambda: malicious.attack_white(small, theta, gen, min(4, budget), ALPHA, 1 - ALPHA))
    out = os.path.join(os.path.dirname(gen), "malicious_reward", "reward_dataset.npy")  # the last call's
    # what the Hessian looks like, on 20 pairs: `p.data.copy_` inside compute_hessian cuts the graph
    r_model = reward.load_reward_model(theta, 2)
    data = [(torch.tensor(a), torch.tensor(b), torch.tensor(c, dtype=torch.float32))
            for a, b, c in np.load(small, allow_pickle=True)]
    h_max = float(malicious.compute_hessian(r_model, data, reward.reward_loss).abs().max())
  before = np.load(pairs, allow_pickle=True)
  after = np.load(out, allow_pickle=True)
  flips = int(sum(a[2] != b[2] for a, b in zip(before, after)))
  return dict(timing, fit_theta_seconds=fit_s, n_pairs=n, budget=budget, flips_changed_labels=flips,
              n_params=int(sum(p.numel() for p in reward.RewardModel(2).parameters())),
              hessian_max_abs_on_20_pairs=h_max, threads=threads,
              versions=dict(torch=torch.__version__, numpy=np.__version__))


def _count_macs(model, *inputs):
  """Multiply-accumulates per row of one forward pass, summed over the linear layers actually applied."""
  import torch
  total = [0]

  def hook(mod, inp, out):
    total[0] += mod.in_features * mod.out_features

  handles = [m.register_forward_hook(hook) for m in model.modules()
             if hasattr(m, "in_features") and hasattr(m, "out_features") and hasattr(m, "weight")]
  with torch.no_grad():
    model(*inputs)
  for h in handles:
    h.remove()
  return total[0]


def ref_retrain(spec):
  import contextlib

  import numpy as np
  import torch

  info = _load_ddpm_torch(spec["repo"])
  threads = _torch_threads(spec["threads"])
  from ddpm_torch.toy import Decoder, GaussianDiffusion, Trainer, get_beta_schedule
  from ddpm_torch.utils import seed_all
  import train_toy  # its load_generated_data (the module's argparse code is under __main__)

  s = spec["settings"]
  tmp = spec["tmp"]
  log = open(os.path.join(tmp, "reference_stdout.log"), "w")
  seed_all(1234)
  data_dir = os.path.dirname(spec["ring"])
  loader = train_toy.load_generated_data(data_dir, s["batch_size"])
  betas = get_beta_schedule("linear", beta_start=0.001, beta_end=0.2, timesteps=s["nfe"])
  diffusion = GaussianDiffusion(betas=betas, model_mean_type="eps", model_var_type="fixed-large",
                                loss_type="mse")

  def trainer(epochs, loader):
    model = Decoder(2, s["width"], s["depth"])  # train_toy.py: --mid-features 128 --num-temporal-layers 3
    opt = torch.optim.Adam(model.parameters(), lr=s["lr"], betas=(0.9, 0.999))
    return Trainer(model=model, optimizer=opt, diffusion=diffusion, epochs=epochs, trainloader=loader,
                   scheduler=None, grad_norm=0, device=torch.device("cpu"), eval_intv=epochs,
                   chkpt_intv=epochs)

  small = torch.utils.data.DataLoader(loader.dataset[:5 * s["batch_size"]], batch_size=s["batch_size"],
                                      shuffle=True)
  trainers = []

  def train():
    t = trainer(s["epochs"], loader)
    t.train(evaluator=None, chkpt_path=None, image_dir=None)
    trainers.append(t)

  with contextlib.redirect_stdout(log):
    train_t = _machine.time_calls(train, spec["repeats"],
                                  warmup=lambda: trainer(1, small).train(evaluator=None, chkpt_path=None))
  model = trainers[-1].model
  model.eval()
  for p in model.parameters():
    p.requires_grad = False
  shape = (s["sample_batch"], 2)

  def sample(batches):  # generate_toy.py's loop, without np.save and the plot
    out = []
    with torch.no_grad():
      for _ in range(batches):
        noise = torch.randn(shape)
        out.append(diffusion.p_sample(model, shape=shape, device=torch.device("cpu"), noise=noise).cpu().numpy())
    return np.concatenate(out, axis=0)

  batches = s["n_samples"] // s["sample_batch"]
  sample_t = _machine.time_calls(lambda: sample(batches), spec["repeats"], warmup=lambda: sample(1))
  macs = _count_macs(model, torch.zeros(1, 2), torch.zeros(1, dtype=torch.int64))
  steps = s["epochs"] * len(loader)
  return dict(
      info, threads=threads,
      network=f"Decoder(2, mid_features={s['width']}, num_temporal_layers={s['depth']}): in_fc, t_proj, "
              f"one TemporalLayer (LayerNorm, fc1, time enc, LayerNorm, fc2; LeakyReLU) applied "
              f"{s['depth']} times with shared weights, out LayerNorm + out_fc",
      n_params=int(sum(p.numel() for p in model.parameters())), macs_per_row_per_eval=macs,
      train_steps=steps, batch_size=s["batch_size"], n_data=len(loader.dataset), n_samples=batches * shape[0],
      nfe=s["nfe"], sample_batch=shape[0], train=train_t, sample=sample_t,
      versions=dict(torch=torch.__version__, numpy=np.__version__))


def ref_script(spec, argv):
  """Run one of the reference's scripts as ``__main__`` (end-to-end timing is taken by the caller)."""
  import runpy
  _load_ddpm_torch(spec["repo"])
  _torch_threads(spec["threads"])
  os.environ.setdefault("MPLBACKEND", "Agg")
  script = os.path.join(spec["repo"], "ddpm-torch", argv[0])
  sys.argv = [script] + argv[1:]
  runpy.run_path(script, run_name="__main__")


def worker(args):
  spec = json.loads(args.spec)
  pinned = _machine.pin_threads(spec["threads"])
  if args.worker == "ref-script":
    ref_script(spec, args.rest)
    return
  load_before, roundtrip_before = _machine.load_average(), _machine.core_roundtrip_ns()
  fn = dict(scl_attack=scl_attack, scl_retrain=scl_retrain, ref_attack=ref_attack,
            ref_retrain=ref_retrain)[f"{args.worker}_{spec['task']}"]
  out = fn(spec)
  out.update(pinned=pinned, peak_rss_mb=_machine.peak_rss_mb(), load_average_before=load_before,
             load_average_after=_machine.load_average(),
             core_roundtrip_ns=[roundtrip_before, _machine.core_roundtrip_ns()])
  print(RESULT_TAG + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------- harness


def run_worker(python, side, spec, timeout, env=None):
  """Start a worker in ``python``; return its result dict (or ``{"error": ...}``)."""
  os.makedirs(spec["tmp"], exist_ok=True)
  cmd = [python, os.path.abspath(__file__), "--worker", side, "--spec", json.dumps(spec)]
  err_path = os.path.join(spec["tmp"], "stderr.log")
  env = {**os.environ, **(env or {})}
  t0 = time.perf_counter()
  try:
    with open(err_path, "w") as err:
      proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout, env=env)
  except subprocess.TimeoutExpired:
    return dict(error=f"timed out after {timeout:.0f} s")
  lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_TAG)]
  if proc.returncode != 0 or not lines:
    with open(err_path) as f:
      tail = f.read()[-1500:]
    return dict(error=f"exit {proc.returncode}", stderr_tail=tail)
  out = json.loads(lines[-1][len(RESULT_TAG):])
  out["worker_wall_seconds"] = time.perf_counter() - t0
  if out.get("peak_rss_mb") is not None:
    _WORKER_PEAKS.append(out["peak_rss_mb"])
  return out


_WORKER_PEAKS: list[float] = []  # each finished worker's own peak_rss_mb (what workers_peak_rss_mb_max reports)


def _bracket(before: dict, after: dict) -> dict:
  """scl's figures from its two workers, one run just before the reference's and one just after: each timing
  (a dict with ``seconds_all``) takes the median and best over both workers' calls, so that a host whose speed
  drifts during the reference's minutes of work weighs on both sides alike. ``bracket`` keeps each worker's
  median; ``core_roundtrip_ns`` lists both workers' probes (before and after each); the rest (compile times,
  memory, the attack's work) is the first worker's."""
  if "error" in before or "error" in after:
    return before if "error" in before else dict(before, bracket=dict(after_error=after))

  def merge(a, b):
    if not (isinstance(a, dict) and isinstance(b, dict)):
      return a
    out = {k: merge(v, b.get(k)) for k, v in a.items()}
    if "seconds_all" in a and "seconds_all" in b:
      walls, cpus = a["seconds_all"] + b["seconds_all"], a.get("cpu_seconds_all", []) + b.get("cpu_seconds_all", [])
      out.update(seconds_all=walls, seconds_median=statistics.median(walls), seconds_best=min(walls),
                 repeats=len(walls), bracket=dict(before_seconds_median=a["seconds_median"],
                                                  after_seconds_median=b["seconds_median"]))
      if cpus:
        out.update(cpu_seconds_all=cpus, cpu_seconds_median=statistics.median(cpus))
    return out

  out = merge(before, after)
  if "core_roundtrip_ns" in before and "core_roundtrip_ns" in after:
    out["core_roundtrip_ns"] = before["core_roundtrip_ns"] + after["core_roundtrip_ns"]
  return out


def _ratio(ref, scl, key=("seconds_median",)):
  def get(d):
    for k in key:
      d = d.get(k) if isinstance(d, dict) else None
    return d
  r, s = get(ref), get(scl)
  return r / s if isinstance(r, (int, float)) and isinstance(s, (int, float)) and s > 0 else None


def run_scripts(args, settings, files, tmp):
  """``--ref-scripts``: train_toy.py then generate_toy.py as separate processes, end to end."""
  spec = dict(repo=os.path.abspath(args.repo), threads=args.threads)
  env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "MPLBACKEND": "Agg"}
  base = [args.ref_python, os.path.abspath(__file__), "--worker", "ref-script", "--spec", json.dumps(spec), "--"]
  quick = [] if not args.quick else [f"--batch-size={settings['batch_size']}", f"--timesteps={settings['nfe']}"]
  out = {}
  for name in ("train_toy.py", "generate_toy.py"):
    walls, error = [], None
    warm = subprocess.run(base + [name, "--help"], cwd=tmp, env=env, capture_output=True, text=True)
    if warm.returncode != 0:
      out[name] = dict(error=f"--help exit {warm.returncode}", stderr_tail=warm.stderr[-1500:])
      continue
    for r in range(args.repeats):
      run_dir = os.path.join(tmp, "scripts", f"{name[:-3]}_{r}")
      chkpt = os.path.join(tmp, "scripts", "train_toy_0", "models")
      if name == "train_toy.py":
        argv = [name, "--device=cpu", f"--data-dir={os.path.dirname(files['ring'])}",
                f"--epochs={settings['epochs']}", f"--chkpt-dir={os.path.join(run_dir, 'models')}",
                f"--chkpt-intv={settings['epochs']}", f"--image-dir={os.path.join(run_dir, 'images')}",
                f"--eval-intv={settings['epochs']}", "--use-dataset"] + quick
      else:
        argv = [name, f"--chkpt-path={os.path.join(chkpt, 'ddpm_checkpoint.pt')}",
                f"--total-size={settings['n_samples']}", "--device=cpu", f"--save-dir={run_dir}"] + (
                    [f"--timesteps={settings['nfe']}"] if args.quick else [])
      t0 = time.perf_counter()
      proc = subprocess.run(base + argv, cwd=tmp, env=env, capture_output=True, text=True)
      walls.append(time.perf_counter() - t0)
      if proc.returncode != 0:
        error = dict(error=f"exit {proc.returncode}", stderr_tail=proc.stderr[-1500:])
        break
    out[name] = error or dict(seconds_median=statistics.median(walls), seconds_all=walls,
                              repeats=args.repeats, warmup="one --help run (imports)", argv=argv[1:])
  out["note"] = ("end to end, one process per script as retrain_ddpm.py runs them: interpreter start, imports, "
                 "file reads/writes included; train_toy.py also draws 2 x min(n_data, 30000) samples for its "
                 "end-of-training evaluation and plot")
  return out


def summary(result):
  """One line per figure: median seconds of each side and their ratio."""
  rows = []
  for e in result.get("attack", []):
    rows.append((f"attack n={e['n_pairs']}", e["scl"], e.get("reference"), e.get("ratio_reference_over_scl")))
    over = e["scl"].get("over_inits") if isinstance(e["scl"], dict) else None
    if isinstance(over, dict):
      rows.append((f"attack n={e['n_pairs']}, median over {over['inits']} theta initialisations", over,
                   e.get("reference"), e.get("ratio_reference_over_scl_median_over_inits")))
  for key in ("ddpm_retrain", "sample"):
    if key in result:
      e = result[key]
      rows.append((key, e["scl"], e.get("reference"), e.get("ratio_reference_over_scl")))
  get = lambda d: d.get("seconds_median") if isinstance(d, dict) else None
  return [dict(figure=f, scl_seconds=get(s), reference_seconds=get(r), ratio_reference_over_scl=q)
          for f, s, r, q in rows]


def harness(args):
  settings = dict(QUICK if args.quick else FULL)
  if args.attack_pairs:
    settings["attack_pairs"] = [int(n) for n in args.attack_pairs.split(",")]
  if args.repeats is None:
    args.repeats = settings["repeats"]
  if args.repeats < 1 or args.threads < 1 or args.scl_attack_repeats < 1 or args.scl_attack_inits < 1:
    sys.exit("--repeats, --scl-attack-repeats, --scl-attack-inits and --threads must be at least 1")
  settings["repeats"] = args.repeats
  settings["scl_attack_repeats"] = args.scl_attack_repeats
  settings["scl_attack_inits"] = args.scl_attack_inits
  tasks = args.tasks.split(",")
  result = dict(benchmark="reference_side_by_side", quick=args.quick, settings=settings,
                machine=_machine.machine(), load_average_before=_machine.load_average())
  ref_info = None
  if args.repo:
    args.repo = os.path.abspath(args.repo)
    for need in ("malicious.py", "reward.py", os.path.join("ddpm-torch", "train_toy.py")):
      if not os.path.exists(os.path.join(args.repo, need)):
        sys.exit(f"--repo {args.repo}: no {need}; expected a clone of osu-srml/Adversarial-Curation")
    check = subprocess.run([args.ref_python, "-c", "import torch, numpy, sklearn, matplotlib, tqdm"],
                           capture_output=True, text=True)
    if check.returncode != 0:
      sys.exit(f"--ref-python {args.ref_python} cannot import what the reference needs "
               f"(torch, numpy, scikit-learn, matplotlib, tqdm):\n{check.stderr[-800:]}")
    commit = subprocess.run(["git", "-C", args.repo, "rev-parse", "HEAD"], capture_output=True, text=True)
    ref_info = dict(repo=args.repo, commit=commit.stdout.strip() or None, python=args.ref_python)
  result["reference"] = ref_info
  result["threads"] = dict(
      per_process=args.threads,
      how=("each worker: sched_setaffinity to this many CPUs (XLA's CPU thread pool is sized from it), "
           "OMP/MKL/OPENBLAS_NUM_THREADS; reference worker: torch.set_num_threads") +
          ("; XLA_FLAGS single-threaded Eigen" if args.threads == 1 else ""))

  with tempfile.TemporaryDirectory(prefix="scl_reference_") as tmp:
    if args.keep_tmp:
      tmp = tempfile.mkdtemp(prefix="scl_reference_kept_")
    files = write_data(tmp, settings)
    base = dict(threads=args.threads, repeats=args.repeats, settings=settings)

    def both(task, extra, name):
      def scl_worker(label):
        return run_worker(sys.executable, "scl", dict(base, task=task, tmp=os.path.join(tmp, name, label),
                                                      attack_repeats=args.scl_attack_repeats,
                                                      attack_inits=args.scl_attack_inits, **extra),
                          args.timeout)

      scl, ref = scl_worker("scl"), None
      if args.repo:
        ref = run_worker(args.ref_python, "ref", dict(base, task=task, repo=args.repo,
                                                      tmp=os.path.join(tmp, name, "ref"), **extra),
                         args.timeout)
        scl = _bracket(scl, scl_worker("scl_after"))
      return scl, ref

    if "attack" in tasks:
      result["attack"] = []
      for n in settings["attack_pairs"]:
        scl, ref = both("attack", dict(pairs=files[f"pairs_{n}"]), f"attack_{n}")
        entry = dict(n_pairs=n, outer_steps=OUTER_STEPS, kappa=KAPPA, alpha=ALPHA,
                     reward_network=f"2 -> {HIDDEN} -> 1", scl=scl)
        if ref is not None:
          entry["reference"] = ref
          entry["ratio_reference_over_scl"] = _ratio(ref, scl)
          entry["ratio_cpu_seconds"] = _ratio(ref, scl, ("cpu_seconds_median",))
          over = scl.get("over_inits") if isinstance(scl, dict) else None
          if isinstance(over, dict) and isinstance(ref.get("seconds_median"), (int, float)):
            entry["ratio_reference_over_scl_median_over_inits"] = ref["seconds_median"] / over["seconds_median"]
        result["attack"].append(entry)

    if "retrain" in tasks:
      scl, ref = both("retrain", dict(ring=files["ring"]), "retrain")
      common = lambda d: {k: v for k, v in d.items() if k not in ("train", "sample")}
      result["retrain_workers"] = dict(scl=common(scl), reference=common(ref) if ref is not None else None)
      for part, key in (("train", "ddpm_retrain"), ("sample", "sample")):
        entry = dict(scl=scl.get(part, scl.get("error")))
        if ref is not None:
          entry["reference"] = ref.get(part, ref.get("error"))
          entry["ratio_reference_over_scl"] = _ratio(ref, scl, (part, "seconds_median"))
          entry["ratio_cpu_seconds"] = _ratio(ref, scl, (part, "cpu_seconds_median"))
          if entry["ratio_reference_over_scl"] and "macs_per_row_per_eval" in ref and "macs_per_row_per_eval" in scl:
            flop = ref["macs_per_row_per_eval"] / scl["macs_per_row_per_eval"]
            entry["reference_flops_over_scl_flops"] = flop
            entry["ratio_per_flop"] = entry["ratio_reference_over_scl"] / flop
        result[key] = entry
      if args.repo and args.ref_scripts:
        result["reference_scripts"] = run_scripts(args, settings, files, tmp)
    if args.keep_tmp:
      result["tmp_dir"] = tmp

  result["summary"] = summary(result)
  if args.repo:
    result["caveats"] = CAVEATS
  load0 = (result["load_average_before"] or [0.0])[0]
  if load0 > 0.5:
    result["warning"] = (f"the 1-minute load average was {load0} when this started: the machine was not idle, "
                         "and a 2-thread PyTorch process slows down far more than XLA under contention")
  result["load_average_after"] = _machine.load_average()
  result["harness_peak_rss_mb"] = _machine.peak_rss_mb()
  result["workers_peak_rss_mb_max"] = max(_WORKER_PEAKS, default=None)
  print(json.dumps(result, indent=1))


CAVEATS = [
    "retrain_ddpm.py imports attack_white from cirfar10_malicious.py (the CIFAR attack: Normalize on 3-channel "
    "images, a VGG reward with .output_layer), which cannot run on 2-D points; the 2-D attack is "
    "malicious.attack_white with reward.RewardModel (2 -> 64 -> 1), timed here. retrain_ddpm.py passes the "
    "budget as a fraction (--buget 0.2) while malicious.attack_white's topk needs a count: floor(0.2 n) is "
    "passed. At iteration 0 retrain_ddpm.py uses gen_reward_model_path before assigning it.",
    "In malicious.compute_hessian the loss is a function of the model's own parameters, into which the "
    "flattened input is copied with p.data.copy_, which autograd does not see: the Hessian is identically "
    "zero (hessian_max_abs_on_20_pairs), pinv gives zero, the normalised gradient is 0/0 = NaN, and the "
    "top-k of NaN picks arbitrary pairs. The timed work is what the code does, not a working attack.",
    "train_reward_model_nosave standardises each 2-D point by its own two coordinates' mean and std, and "
    "ignores the epochs/lr that attack_white passes down (10 epochs, lr 1e-4 always); reward nets: ReLU in "
    "the reference, SiLU in scl (twice-differentiable, for the implicit function theorem).",
    "The attacks are equal in settings, not in algorithm: the reference re-trains a fresh reward net with "
    "10 n single-pair Adam steps per outer step and forms a dense Hessian; scl warm-starts an L-BFGS fit "
    "(at most 100 iterations, 30 curvature pairs) and solves with matrix-free CG (at most 10 steps, "
    "warm-started) per outer step, then re-fits once more (from the last outer step's fit, on the gradient's "
    "discrete flips) to choose between them and the dist heuristic's flips, whose re-fit is the first outer "
    "step's.",
    "train_toy.py (as retrain_ddpm.py calls it) trains a fresh network from scratch every iteration (no "
    "--resume/--chkpt-path), and ends with an evaluation that samples 2 x min(n_data, 30000) points; scl's "
    "flow warm-starts from the previous params.",
    "The DDPM's 3 temporal layers are one module instance repeated ([TemporalLayer(...)] * 3): weights are "
    "shared, compute is three layers; each has three 128 x 128 products (fc1, time encoding, fc2) and two "
    "LayerNorms, so one evaluation costs about 3x the multiply-accumulates of scl's width-128, depth-3 "
    "velocity field (macs_per_row_per_eval).",
    "DDPM sampling is 100 ancestral steps (1 NFE each) in batches of 1,000; scl's flow uses 50 midpoint "
    "steps (2 NFE each) in chunks of 8,192: equal NFE, different solvers and batching.",
    "Load: with 2 threads per process on a machine where other jobs ran (load average about 4 on 2 cores), "
    "the reference attack (many thousands of tiny eager ops) took about 10x longer in wall and CPU time than "
    "on the idle machine, while with --threads 1 it did not slow down; XLA's programs suffered far less. "
    "Take the figures on an idle machine (load_average_* are reported), or also at --threads 1.",
    "ddpm_torch/__init__.py imports the image code (torchvision, FID): bypassed (see the module docstring); "
    "torch >= 2.6 needs TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for generate_toy.py to load train_toy.py's "
    "checkpoint (numpy scalars); the scripts default to --device=cuda:0 (cpu passed here).",
]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--repo", help="clone of osu-srml/Adversarial-Curation (omit: scl's figures only)")
  p.add_argument("--ref-python", default=sys.executable,
                 help="interpreter with torch for the reference side (default: this one)")
  p.add_argument("--quick", action="store_true", help="smoke run: 100 pairs, 20 Adam steps, 1,000 samples")
  p.add_argument("--repeats", type=int, default=None, help="timed calls per figure (default 3; quick 2)")
  p.add_argument("--scl-attack-repeats", type=int, default=10,
                 help="timed calls of scl's attack (default 10: each takes a fraction of a second)")
  p.add_argument("--scl-attack-inits", type=int, default=8,
                 help="attacker's-theta initialisations scl's attack is also timed from (default 8; see "
                      "over_inits)")
  p.add_argument("--threads", type=int, default=min(2, len(os.sched_getaffinity(0))),
                 help="CPUs/threads per worker, both sides (default: min(2, usable CPUs))")
  p.add_argument("--tasks", default="attack,retrain", help="comma-separated: attack, retrain (incl. sampling)")
  p.add_argument("--attack-pairs", help="comma-separated n (default 1000,4000; quick 100)")
  p.add_argument("--ref-scripts", action="store_true",
                 help="also time train_toy.py / generate_toy.py end to end as separate processes")
  p.add_argument("--timeout", type=float, default=float(os.environ.get("BENCH_TIMEOUT_S", "7200")),
                 help="seconds per worker")
  p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (logs, files)")
  p.add_argument("--worker", choices=["scl", "ref", "ref-script"], help=argparse.SUPPRESS)
  p.add_argument("--spec", help=argparse.SUPPRESS)
  p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    worker(args)
  else:
    harness(args)


if __name__ == "__main__":
  main()
