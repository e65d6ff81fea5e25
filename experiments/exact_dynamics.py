"""Exact population dynamics of curated loops (scl.exact) on two finite supports, with the theorem monitors.

Supports:
* ``cifar10``: 10 classes, reward ``10 - class`` (the papers' CIFAR-10 evaluation reward), ``p_0`` uniform.
* ``gaussian8``: ``--n_atoms`` points sampled from the Gaussian-8 ring (radius 2, std 0.02), reward
  ``-10 max(|x - (2, 0)| - 3, 0)``, ``p_0`` uniform on the atoms.

Writes into ``--workdir``: ``metrics.csv`` / ``metrics.json`` (one row per support, K, λ, φ, iteration) and
``summary.json``, and PNGs: expected reward vs iteration over the K x λ grid, class / mode proportions (bias
amplification), each bound next to the quantity it bounds, and a φ sweep with ``r~ = -r``.

    python experiments/exact_dynamics.py --workdir /tmp/exact --iterations 20
"""

from __future__ import annotations

import os
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from scl import exact, io  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Output directory.", required=True)
flags.DEFINE_integer("iterations", 20, "Loop iterations T.")
flags.DEFINE_integer("n_atoms", 400, "Atoms of the discretised Gaussian-8 ring.")
flags.DEFINE_integer("seed", 0, "Seed of the Gaussian-8 atoms.")
flags.DEFINE_list("K", ["1", "2", "4", "16", "inf"], "Grid of K.")
flags.DEFINE_list("lam", ["inf", "4", "1", "0.25"], "Grid of λ (inf = fully synthetic).")
flags.DEFINE_integer("n_phi", 11, "Points of the φ sweep in [0, 1].")
flags.DEFINE_float("phi_K", 4.0, "K of the φ sweep.")


def cifar10_support():
  classes = np.arange(10)
  return dict(p0=np.full(10, 0.1, np.float32), r=(10.0 - classes).astype(np.float32), group=classes,
              n_groups=10, group_name="class")


def gaussian8_support(n_atoms: int, seed: int):
  rng = np.random.default_rng(seed)
  mode = rng.integers(0, 8, n_atoms)
  angle = 2 * np.pi * mode / 8
  x = 2.0 * np.stack([np.cos(angle), np.sin(angle)], -1) + 0.02 * rng.normal(size=(n_atoms, 2))
  r = -10.0 * np.maximum(np.linalg.norm(x - np.array([2.0, 0.0]), axis=-1) - 3.0, 0.0)
  return dict(p0=np.full(n_atoms, 1.0 / n_atoms, np.float32), r=r.astype(np.float32), group=mode,
              n_groups=8, group_name="mode")


def sweep_grid(p0, r, Ks, lams, iterations):
  """Trajectories and metrics over the K x λ grid, one vmapped call: [nK, nλ, T+1, ...]."""
  run = lambda K, lam: exact.run(p0, r, K, lam, iterations=iterations)
  return jax.jit(jax.vmap(jax.vmap(run, in_axes=(None, 0)), in_axes=(0, None)))(Ks, lams)


def sweep_phi(p0, r, K, phis, iterations):
  run = lambda phi: exact.run(p0, r, K, jnp.inf, iterations=iterations, r_adv=-r, phi=phi)
  return jax.jit(jax.vmap(run))(phis)


def group_proportions(traj, group, n_groups):
  """[T+1, n] -> [T+1, n_groups]."""
  onehot = np.eye(n_groups)[group]
  return np.asarray(traj) @ onehot


def label(x):
  return "inf" if np.isinf(x) else f"{x:g}"


def main(argv):
  del argv
  t_start = time.time()
  workdir = FLAGS.workdir
  os.makedirs(workdir, exist_ok=True)
  T = FLAGS.iterations
  Ks = np.array([float(k) for k in FLAGS.K], np.float32)
  lams = np.array([float(l) for l in FLAGS.lam], np.float32)
  phis = np.linspace(0.0, 1.0, FLAGS.n_phi).astype(np.float32)
  supports = {"cifar10": cifar10_support(), "gaussian8": gaussian8_support(FLAGS.n_atoms, FLAGS.seed)}
  rows, summary = [], {}

  for name, sup in supports.items():
    p0, r = jnp.asarray(sup["p0"]), jnp.asarray(sup["r"])
    traj, metrics = sweep_grid(p0, r, jnp.asarray(Ks), jnp.asarray(lams), T)
    traj_phi, metrics_phi = sweep_phi(p0, r, FLAGS.phi_K, jnp.asarray(phis), T)
    metrics = jax.tree.map(np.asarray, metrics)
    metrics_phi = jax.tree.map(np.asarray, metrics_phi)
    keys = sorted(metrics)

    for i, K in enumerate(Ks):
      for j, lam in enumerate(lams):
        for t in range(T + 1):
          rows.append(dict(support=name, K=float(K), lam=float(lam), phi=0.0, iteration=t,
                           **{k: float(metrics[k][i, j, t]) for k in keys}))
    for i, phi in enumerate(phis):
      for t in range(T + 1):
        rows.append(dict(support=name, K=FLAGS.phi_K, lam=float("inf"), phi=float(phi), iteration=t,
                         **{k: float(metrics_phi[k][i, t]) for k in keys}))

    # 1. Expected reward vs iteration over the grid.
    fig, axes = plt.subplots(1, len(lams), figsize=(4 * len(lams), 3.2), sharey=True)
    for j, lam in enumerate(lams):
      for i, K in enumerate(Ks):
        axes[j].plot(metrics["expected_reward"][i, j], label=f"K={label(K)}")
      axes[j].set_title(f"{name}: λ={label(lam)}")
      axes[j].set_xlabel("iteration")
    axes[0].set_ylabel("E_p[r]")
    axes[-1].legend(fontsize=8)
    io.save_figure(os.path.join(workdir, f"{name}_expected_reward.png"), fig)
    plt.close(fig)

    # 2. Group proportions (bias amplification), K = 2 fully synthetic and K = 2, λ = 1.
    i2 = int(np.argmin(np.abs(Ks - 2.0)))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, j in zip(axes, [0, int(np.argmin(np.abs(lams - 1.0)))]):
      props = group_proportions(traj[i2, j], sup["group"], sup["n_groups"])
      ax.stackplot(np.arange(T + 1), props.T, labels=[f"{sup['group_name']} {g}" for g in range(sup["n_groups"])])
      ax.set_title(f"{name}: K={label(Ks[i2])}, λ={label(lams[j])}")
      ax.set_xlabel("iteration")
      ax.set_ylim(0, 1)
    axes[1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    io.save_figure(os.path.join(workdir, f"{name}_proportions.png"), fig)
    plt.close(fig)

    # 3. Each bound next to the quantity it bounds (K = 4 where available).
    i4 = int(np.argmin(np.abs(Ks - 4.0)))
    j_syn = int(np.argmin(np.where(np.isinf(lams), 0, 1)))
    j_mix = int(np.argmin(np.abs(lams - 1.0)))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    m = {k: v[i4, j_syn] for k, v in metrics.items()}
    axes[0].plot(m["exp_reward"], "o-", label="E_{p_t}[e^r]")
    axes[0].plot(m["lemma22_rhs"], "x--", label="Lemma 2.2 bound")
    axes[0].set_title(f"K={label(Ks[i4])}, λ=inf")
    m = {k: v[i4, j_mix] for k, v in metrics.items()}
    axes[1].plot(m["exp_reward"], "o-", label="E_{p_t}[e^r]")
    axes[1].plot(m["thm23_rhs"], "x--", label="Thm 2.3 bound")
    axes[1].set_title(f"K={label(Ks[i4])}, λ={label(lams[j_mix])}")
    # Theorem 2.4 needs λ < 1/(K-1): run λ = 0.25 / (K - 1) at this K.
    lam24 = 0.25 / max(float(Ks[i4]) - 1.0, 1.0)
    _, m24 = exact.run(p0, r, Ks[i4], lam24, iterations=T)
    axes[2].plot(np.asarray(m24["kl_to_data"]), "o-", label="KL(p_t || p_data)")
    axes[2].plot(np.asarray(m24["thm24_rhs"]), "x--", label="Thm 2.4 bound")
    axes[2].set_title(f"K={label(Ks[i4])}, λ={lam24:.3g}")
    for ax in axes:
      ax.set_xlabel("iteration")
      ax.legend(fontsize=8)
    io.save_figure(os.path.join(workdir, f"{name}_bounds.png"), fig)
    plt.close(fig)

    # 4. φ sweep with r~ = -r.
    final = metrics_phi["expected_reward"][:, -1]
    first_step = metrics_phi["expected_reward"][:, 1] - metrics_phi["expected_reward"][:, 0]
    rising = phis[first_step > 0]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for i, phi in enumerate(phis):
      axes[0].plot(metrics_phi["expected_reward"][i], color=plt.cm.viridis(phi), label=f"φ={phi:.1f}")
    axes[0].set_title(f"{name}: K={FLAGS.phi_K:g}, λ=inf, r~=-r")
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("E_p[r]")
    axes[0].legend(fontsize=6, ncol=2)
    axes[1].plot(phis, final, "o-")
    axes[1].axhline(metrics_phi["expected_reward"][0, 0], color="gray", ls=":")
    axes[1].set_xlabel("φ")
    axes[1].set_title(f"E_p[r] at iteration {T}")
    axes[2].plot(metrics_phi["lemma33_slack"].T)
    axes[2].axhline(0.0, color="gray", ls=":")
    axes[2].set_title("Lemma 3.3 slack (scaled), one line per φ")
    axes[2].set_xlabel("iteration")
    io.save_figure(os.path.join(workdir, f"{name}_phi_sweep.png"), fig)
    plt.close(fig)

    holds = {}
    for key in ("lemma22_holds", "thm23_holds", "thm24_holds", "lemma33_holds"):
      vals = np.concatenate([metrics[key].ravel(), metrics_phi[key].ravel()])
      vals = vals[~np.isnan(vals)]
      holds[key] = dict(checked=int(vals.size), violated=int((vals == 0).sum()))
    summary[name] = dict(
        n_atoms=int(sup["p0"].shape[0]),
        initial_expected_reward=float(metrics["expected_reward"][0, 0, 0]),
        final_expected_reward={f"K={label(K)},lam={label(lam)}": float(metrics["expected_reward"][i, j, -1])
                               for i, K in enumerate(Ks) for j, lam in enumerate(lams)},
        phi_sweep_final_expected_reward={f"{phi:.2f}": float(v) for phi, v in zip(phis, final)},
        phi_first_step_rising_up_to=float(rising.max()) if rising.size else None,
        monitors=holds)

  frame = pd.DataFrame(rows)
  io.write_csv(os.path.join(workdir, "metrics.csv"), frame)
  io.write_json(os.path.join(workdir, "metrics.json"), frame.to_dict(orient="records"))
  summary["seconds"] = time.time() - t_start
  io.write_json(os.path.join(workdir, "summary.json"), summary)
  print(io.to_jsonable(summary))


if __name__ == "__main__":
  app.run(main)
