"""Conditional flow matching: the neural generative model family.

The model transports ``x0 ~ N(0, I)`` to the data along the linear (rectified-flow / OT) path
``x_t = (1 - t) x0 + t x1``, whose conditional velocity is ``x1 - x0``. A velocity field ``v_θ(x, t)`` is
regressed onto it (Lipman et al. 2023, "Flow matching for generative modelling"):

    L(θ) = E_{t ~ U[0, 1], x0 ~ N(0, I), x1 ~ Σ_i w_i δ_{x_i}} || v_θ(x_t, t) - (x1 - x0) ||² ,

and samples are drawn by integrating ``dx/dt = v_θ(x, t)`` from ``t = 0`` to ``t = 1``. The velocity field
is a residual MLP on flattened samples (:class:`VelocityMLP`, ``velocity="mlp"``) or, for images, a small
convolutional U-Net (:class:`scl.models.unet.VelocityUNet`, ``velocity="unet"``). On the CPU, the MLP's training
gradient and the sampler's evaluations of it run as fused native calls where they apply
(:func:`scl._native.supports_flow`: width a multiple of 16, at most 4 outputs), the same values as ``jax.grad``
and ``apply`` to float rounding.

Everything lives in a standardised space ``z = (x - loc) / scale``; ``loc`` and ``scale`` are the weighted
per-coordinate mean and standard deviation of the data given to :func:`init` (that of ``p_0``), kept in the
params and never changed by :func:`fit`, so the loop's retraining sees one fixed coordinate system.

Params pytree: ``{"net": flax params, "loc": [*event], "scale": [*event]}``.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from scl import _native
from scl import registry
from scl.models.base import Model
from scl.models.base import inverse_cdf_table

Array = chex.Array

#: Frequencies of the sinusoidal time features: ``π·2^k`` for ``k = 0..N_FREQ-1`` (periods 2 down to 1/64).
N_FREQ = 8
#: Floor on the standardisation scale, so a degenerate coordinate does not blow up.
MIN_SCALE = 1e-3
#: Fraction of :func:`init`'s steps spent on the linear learning-rate warm-up (then cosine decay to 0).
INIT_WARMUP = 0.02


def time_features(t: Array) -> Array:
  """Time embedding ``[t, sin(π 2^k t), cos(π 2^k t)]_{k < N_FREQ}``.

  Only ``sin(π t)`` and ``cos(π t)`` call the trigonometric functions; the higher frequencies come from the
  double-angle formulas ``sin 2a = 2 sin a cos a``, ``cos 2a = (cos a - sin a)(cos a + sin a)``. XLA's CPU
  ``sin``/``cos`` are scalar library calls (about 10 ns each: with 8 frequencies at batch 1,000 they took a
  tenth of a flow training step), the doublings are vectorised products. Their error doubles with each
  frequency, to about 4e-5 at ``2^7``, which is also the error of ``sin`` of the float32 angle ``π 2^7 t``.

  Args:
    t: times in [0, 1], shape ``[...]``.

  Returns:
    ``[..., 2 * N_FREQ + 1]`` float32.
  """
  t = jnp.asarray(t, jnp.float32)[..., None]
  s, c = jnp.sin(math.pi * t), jnp.cos(math.pi * t)
  sines, cosines = [s], [c]
  for _ in range(N_FREQ - 1):
    s, c = 2.0 * s * c, (c - s) * (c + s)
    sines.append(s)
    cosines.append(c)
  return jnp.concatenate([t] + sines + cosines, axis=-1)


#: Output layers with at most this many features are computed as that many matrix-vector products.
NARROW = 4


class NarrowDense(nn.Module):
  """``nn.Dense`` (the same parameters, initialisers and values) for a narrow output (``features <= NARROW``).

  The output is ``features`` matrix-vector products instead of one ``[n, k] @ [k, features]`` product:
  the kernel's gradient is then ``features`` products ``hᵀ g_j`` ``[k]``, where XLA's CPU product for
  ``hᵀ g`` ``[k, features]`` (contracting the batch axis, a thin result) took 117 µs at ``[1,000, 128]`` against
  5 µs (a tenth of a flow training step). Wider outputs are one product, as ``nn.Dense``.
  """

  features: int

  @nn.compact
  def __call__(self, h: Array) -> Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (h.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    if self.features <= NARROW:
      return jnp.stack([h @ kernel[:, j] for j in range(self.features)], axis=-1) + bias
    return h @ kernel + bias


class VelocityMLP(nn.Module):
  """Residual MLP velocity field ``v(z, t)`` on flattened samples.

  ``Dense(width)`` on ``[z, time_features(t)]`` (split into a Dense on ``z`` plus a bias-free Dense on the
  time features, which is the same map but lets a single time ``t []`` be broadcast over the batch without
  materialising ``[n, features]``), then ``depth`` residual blocks ``h + silu(Dense(width)(h))``, then
  ``Dense(d)`` (:class:`NarrowDense`: the same parameters).

  Attributes:
    width: hidden width.
    depth: number of residual blocks.
    out_dim: ``d``, the flattened event size.
  """

  width: int
  depth: int
  out_dim: int

  @nn.compact
  def __call__(self, z: Array, t: Array) -> Array:
    """``z [n, d]``, ``t [n]`` or ``[]`` -> velocity ``[n, d]``."""
    temb = time_features(t)
    if temb.ndim == 1:
      temb = temb[None]
    h = nn.Dense(self.width, name="in_x")(z) + nn.Dense(self.width, use_bias=False, name="in_t")(temb)
    h = nn.silu(h)
    for i in range(self.depth):
      h = h + nn.silu(nn.Dense(self.width, name=f"block_{i}")(h))
    return NarrowDense(self.out_dim, name="out")(h)


def _native_grad(p, z1: Array, z0: Array, t: Array, *, depth: int):
  """The gradient of ``train``'s loss in the :class:`VelocityMLP`'s params ``p`` by the fused CPU kernel
  (:func:`scl._native.flow_mlp_loss_and_grad`): the same value as ``jax.grad`` of that loss, to float rounding.

  The input layer's two Dense maps act on ``[z_t, time_features(t)]`` as one ``[d + 2 N_FREQ + 1, width]`` kernel,
  and the residual blocks' kernels and biases are stacked, as the kernel takes them.
  """
  q = p["params"]
  d = z1.shape[-1]
  zt = (1.0 - t)[:, None] * z0 + t[:, None] * z1
  x = jnp.concatenate([zt, time_features(t)], axis=-1)
  blocks = [q[f"block_{i}"] for i in range(depth)]
  _, (g0, gb0, gk, gb, go, gbo) = _native.flow_mlp_loss_and_grad(
      x, z1 - z0, jnp.concatenate([q["in_x"]["kernel"], q["in_t"]["kernel"]], axis=0), q["in_x"]["bias"],
      jnp.stack([blk["kernel"] for blk in blocks]), jnp.stack([blk["bias"] for blk in blocks]), q["out"]["kernel"],
      q["out"]["bias"])
  grads = {"in_x": {"kernel": g0[:d], "bias": gb0}, "in_t": {"kernel": g0[d:]}, "out": {"kernel": go, "bias": gbo}}
  grads.update({f"block_{i}": {"kernel": gk[i], "bias": gb[i]} for i in range(depth)})
  return {"params": grads}


def _native_velocity(p, z: Array, t: Array, *, depth: int) -> Array:
  """:class:`VelocityMLP`'s output on ``z [m, d]`` at one time ``t []`` by the fused CPU kernel
  (:func:`scl._native.flow_mlp_forward`): the time features enter as part of the input layer's bias."""
  q = p["params"]
  bias = q["in_x"]["bias"] + time_features(t) @ q["in_t"]["kernel"]
  blocks = [q[f"block_{i}"] for i in range(depth)]
  return _native.flow_mlp_forward(z, q["in_x"]["kernel"], bias, jnp.stack([blk["kernel"] for blk in blocks]),
                                  jnp.stack([blk["bias"] for blk in blocks]), q["out"]["kernel"], q["out"]["bias"])


#: Random numbers (floats) drawn at once for a block of training steps (16 MiB), at most DRAW_BLOCK_STEPS steps.
DRAW_BLOCK_FLOATS = 2 ** 22
DRAW_BLOCK_STEPS = 64


def draw_block(steps: int, floats_per_step: int) -> int:
  """Training steps whose random draws are made at once: the largest divisor of ``steps`` of at most
  :data:`DRAW_BLOCK_STEPS` whose draws fit in :data:`DRAW_BLOCK_FLOATS` (at least 1).

  JAX's CPU threefry is a rolled loop of small kernels per call; three calls per step cost about 5% of a
  flow training step at batch 1,000. Drawn for a block of steps (``vmap`` over the steps' keys: the same
  numbers as step by step), that loop runs once per block.
  """
  cap = max(1, min(DRAW_BLOCK_STEPS, DRAW_BLOCK_FLOATS // max(1, floats_per_step)))
  return max(b for b in range(1, min(cap, steps) + 1) if steps % b == 0)


def _warmup_cosine(i: Array, steps: int) -> Array:
  """Learning-rate multiplier at step ``i`` of ``steps``: linear warm-up over ``INIT_WARMUP``, cosine to 0."""
  warm = max(1.0, INIT_WARMUP * steps)
  frac = jnp.clip((i - warm) / max(1.0, steps - warm), 0.0, 1.0)
  return jnp.minimum((i + 1.0) / warm, 0.5 * (1.0 + jnp.cos(jnp.pi * frac)))


def _weighted_standardisation(x: Array, w: Array) -> tuple[Array, Array]:
  """Weighted per-coordinate mean and std of ``x [N, *event]`` under ``w [N]`` -> ``([*event], [*event])``."""
  w = w / jnp.sum(w)
  wx = w.reshape((-1,) + (1,) * (x.ndim - 1))
  loc = jnp.sum(wx * x, axis=0)
  var = jnp.sum(wx * jnp.square(x - loc), axis=0)
  return loc, jnp.maximum(jnp.sqrt(var), MIN_SCALE)


def make_flow(
    event_shape: Sequence[int] = (2,),
    width: int = 128,
    depth: int = 3,
    train_steps: int = 1250,
    init_steps: int = 3000,
    batch_size: int = 1000,
    sample_steps: int = 100,
    init_lr: float = 1e-2,
    solver: str = "midpoint",
    sample_chunk: int = 8192,
    velocity: str = "mlp",
) -> Model:
  """Build the flow-matching :class:`~scl.models.base.Model` (name ``"flow"``).

  Args:
    event_shape: shape of one sample; samples are ``[n, *event_shape]`` float32.
    width, depth: the velocity network's size: for ``"mlp"`` the hidden width and the number of residual
      blocks (:class:`VelocityMLP`); for ``"unet"`` the base channels and the residual blocks per resolution
      (:class:`scl.models.unet.VelocityUNet`, two resolutions).
    train_steps: Adam steps per :func:`fit` (one ``lax.scan``).
    init_steps: Adam steps of :func:`init` (``p_0``, trained from scratch on the real data).
    batch_size: minibatch size; minibatches are drawn with replacement with probability ``∝ w``.
    sample_steps: network evaluations (NFE) per sample when integrating the ODE.
    init_lr: peak learning rate of :func:`init`, which warms up linearly over the first 2% of its steps and
      then decays to 0 on a cosine (measured on Gaussian-8 at 3000 steps, this sharpens the modes far more
      than a constant 1e-3). ``fit`` uses the traced ``hyper.lr``, constant, with fresh Adam moments.
    solver: ``"midpoint"`` (``sample_steps // 2`` explicit-midpoint steps, 2 NFE each) or ``"euler"``
      (``sample_steps`` Euler steps).
    sample_chunk: :func:`sample` integrates at most this many rows at once (see there).
    velocity: the velocity network: ``"mlp"`` (:class:`VelocityMLP` on flattened samples) or ``"unet"``
      (:class:`scl.models.unet.VelocityUNet`, for images; ``event_shape`` must be ``(H, W, C)``). Both take
      and return flattened ``[n, d]``, so training and sampling are the same code.

  Returns:
    ``Model(name="flow", init, fit, sample, log_prob=None, probs=None)``.

  Raises:
    ValueError: an unknown ``solver`` or ``velocity``, or ``velocity="unet"`` on a non-image event shape.
  """
  event_shape = tuple(int(s) for s in event_shape)
  d = math.prod(event_shape)
  if solver not in ("midpoint", "euler"):
    raise ValueError(f"unknown solver {solver!r}")
  if solver == "midpoint" and sample_steps < 2:
    raise ValueError("the midpoint solver needs sample_steps >= 2")
  if velocity == "mlp":
    net = VelocityMLP(width=width, depth=depth, out_dim=d)
  elif velocity == "unet":
    from scl.models import unet as unet_lib  # here: unet imports this module's time features
    net = unet_lib.make_unet(event_shape, width=width, blocks=depth)
  else:
    raise ValueError(f"unknown velocity {velocity!r}: choose 'mlp' or 'unet'")
  # Adam's moment estimates; the learning rate is applied outside so it can be a traced scalar.
  adam = optax.scale_by_adam()

  def flatten(x: Array) -> Array:
    return x.reshape((x.shape[0], d)).astype(jnp.float32)

  def train(net_params, key: Array, x: Array, w: Array, loc: Array, scale: Array, lr: Array,
            steps: int, decay: bool = False):
    """``steps`` Adam steps of the CFM loss on ``(x [N, *event], w [N])``; returns the new net params."""
    chex.assert_shape(x, (None,) + event_shape)
    n = x.shape[0]
    chex.assert_shape(w, (n,))
    z1_all = flatten((x - loc) / scale)                      # [N, d]
    cdf = inverse_cdf_table(w.astype(jnp.float32))          # [N], inverse-CDF minibatches: no weight-0 point
    total = cdf[-1]

    def loss_fn(p, z1, z0, t):
      zt = (1.0 - t)[:, None] * z0 + t[:, None] * z1
      v = net.apply(p, zt, t)
      return jnp.mean(jnp.sum(jnp.square(v - (z1 - z0)), axis=-1))

    if velocity == "mlp" and _native.supports_flow(width, d, depth):
      grad_fn = functools.partial(_native_grad, depth=depth)
    else:
      grad_fn = jax.grad(loss_fn)

    def draw(step_key):
      """One step's minibatch indices ``[batch]``, noise ``z0 [batch, d]`` and times ``t [batch]``."""
      k_idx, k_z0, k_t = jax.random.split(step_key, 3)
      u = jax.random.uniform(k_idx, (batch_size,), jnp.float32) * total
      # the binary search unrolled (log2 N steps, the same indices): a loop of tiny ops costs ~7% of a step
      idx = jnp.minimum(jnp.searchsorted(cdf, u, side="right", method="scan_unrolled"), n - 1)
      z0 = jax.random.normal(k_z0, (batch_size, d), jnp.float32)
      t = jax.random.uniform(k_t, (batch_size,), jnp.float32)
      return idx, z0, t

    def step(carry, inputs):
      p, opt_state = carry
      (idx, z0, t), i = inputs
      lr_i = lr * _warmup_cosine(i, steps) if decay else lr
      grads = grad_fn(p, z1_all[idx], z0, t)
      updates, opt_state = adam.update(grads, opt_state, p)
      p = jax.tree.map(lambda a, g: a - lr_i * g, p, updates)
      return (p, opt_state), None

    def block(carry, inputs):  # the draws of `per_block` steps at once, then those steps
      keys, i = inputs
      return jax.lax.scan(step, carry, (jax.vmap(draw)(keys), i))[0], None

    per_block = draw_block(steps, batch_size * (d + 2))
    keys = jax.random.split(key, steps)
    keys = keys.reshape((steps // per_block, per_block) + keys.shape[1:])
    (net_params, _), _ = jax.lax.scan(
        block, (net_params, adam.init(net_params)),
        (keys, jnp.arange(steps, dtype=jnp.float32).reshape(steps // per_block, per_block)))
    return net_params

  def init(key: Array, x: Array, w: Array, lr: float | Array = init_lr):
    """Fresh network + ``init_steps`` Adam steps on ``(x [N, *event], w [N])``: ``p_0``."""
    k_net, k_train = jax.random.split(key)
    loc, scale = _weighted_standardisation(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
    net_params = net.init(k_net, jnp.zeros((1, d), jnp.float32), jnp.zeros((1,), jnp.float32))
    net_params = train(net_params, k_train, x, w, loc, scale, jnp.asarray(lr, jnp.float32), init_steps,
                       decay=True)
    return {"net": net_params, "loc": loc, "scale": scale}

  def fit(params, key: Array, x: Array, w: Array, hyper):
    """Warm-started retraining: ``train_steps`` Adam steps (fresh moments, lr ``hyper.lr``) on ``(x, w)``."""
    lr = jnp.asarray(hyper.lr, jnp.float32)
    net_params = train(params["net"], key, x, w, params["loc"], params["scale"], lr, train_steps)
    return {"net": net_params, "loc": params["loc"], "scale": params["scale"]}

  def integrate(net_params, z: Array) -> Array:
    """Push ``z [m, d]`` at t=0 through the ODE to t=1 with ``sample_steps`` NFE."""
    if velocity == "mlp" and _native.supports_flow(width, d, depth):
      v = functools.partial(_native_velocity, net_params, depth=depth)
    else:
      v = functools.partial(net.apply, net_params)
    if solver == "euler":
      h = 1.0 / sample_steps

      def euler(z, i):
        t = i.astype(jnp.float32) * h
        return z + h * v(z, t), None

      z, _ = jax.lax.scan(euler, z, jnp.arange(sample_steps))
    else:
      h = 1.0 / (sample_steps // 2)

      def midpoint(z, i):
        t = i.astype(jnp.float32) * h
        z_half = z + 0.5 * h * v(z, t)
        return z + h * v(z_half, t + 0.5 * h), None

      z, _ = jax.lax.scan(midpoint, z, jnp.arange(sample_steps // 2))
    return z

  def sample(params, key: Array, n: int) -> Array:
    """Integrate ``dz/dt = v(z, t)`` from ``z ~ N(0, I)`` at t=0 to t=1 (``sample_steps`` NFE) -> ``[n, *event]``.

    Large ``n`` is integrated in equal chunks of at most ``sample_chunk`` rows (``lax.map`` over chunks, each
    running the whole time scan) so the ``[chunk, width]`` activations stay in cache; on 2 CPU cores this takes about a
    quarter less CPU time than one ``[n, width]`` batch at n = 50,000.
    """
    if n <= sample_chunk:
      z = integrate(params["net"], jax.random.normal(key, (n, d), jnp.float32))
    else:
      chunks = -(-n // sample_chunk)
      rows = -(-n // chunks)                       # balanced: at most chunks - 1 padding rows
      z0 = jax.random.normal(key, (chunks, rows, d), jnp.float32)
      z = jax.lax.map(functools.partial(integrate, params["net"]), z0).reshape(-1, d)[:n]
    x = z.reshape((n,) + event_shape) * params["scale"] + params["loc"]
    chex.assert_shape(x, (n,) + event_shape)
    return x

  return Model(name="flow", init=init, fit=fit, sample=sample, log_prob=None, probs=None)


@registry.MODELS.register("flow")
def _build(cfg, event_shape, n_atoms: int | None) -> Model:
  """Registered as ``model="flow"``: the flow of ``cfg.model``'s sizes and velocity network (``velocity``)."""
  del n_atoms
  m = cfg.model
  return make_flow(event_shape, width=m.width, depth=m.depth, train_steps=m.train_steps,
                   init_steps=m.init_steps, batch_size=m.batch_size, sample_steps=m.sample_steps,
                   velocity=m.velocity)
