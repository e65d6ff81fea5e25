"""A small convolutional U-Net velocity field ``v(z, t)`` for images, used by the flow (``velocity="unet"``).

Like :class:`scl.models.flow.VelocityMLP` it maps flattened samples ``z [n, d]`` and times ``t [n]`` (or one
``t []``) to velocities ``[n, d]``, so the flow's training and ODE code are the same for both; the images
``[n, H, W, C]`` only exist inside :meth:`VelocityUNet.__call__`.

Layout (``levels`` resolutions, ``width · mults[l]`` channels at level ``l``, ``blocks`` residual blocks per
level; the DDPM U-Net of Ho et al. 2020, without attention)::

    conv 3×3 -> [blocks × ResBlock, 2×2 average-pool] per level ... -> ResBlock (bottom)
             -> [nearest 2× upsample, concat skip, blocks × ResBlock] per level -> GroupNorm, SiLU, conv 3×3

``ResBlock(h, temb) = skip(h) + conv(SiLU(GN(conv(SiLU(GN(h))) + Dense(SiLU(temb)))))``: the time
embedding (sinusoidal features of ``t`` through a two-layer MLP) is added in every block. The last
convolution starts at zero, so a fresh network is the zero velocity field.

Convolutions are 3×3 "same" convolutions. On CPU they are computed as one matrix product over the 9
shifted copies of the input (im2col; the parameters are those of ``nn.Conv(features, (3, 3))``): XLA:CPU
runs ``lax.conv`` inside a ``lax.scan`` body — the flow's training and ODE loops — far slower than outside
one (jax-ml/jax#12868), while slices and a matmul do not have that problem. On GPU/TPU ``lax.conv`` is used.
"""

from __future__ import annotations

import math
from typing import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from scl.models import flow as flow_lib

Array = chex.Array


def _groups(channels: int, max_groups: int = 8) -> int:
  """The largest divisor of ``channels`` that is at most ``max_groups`` (GroupNorm's group count)."""
  return max(g for g in range(1, max_groups + 1) if channels % g == 0)


class Conv3x3(nn.Module):
  """A 3×3 "same" convolution, parameters ``kernel [3, 3, C_in, features]`` and ``bias [features]``.

  Attributes:
    features: output channels.
    im2col: compute it as a matmul over the 9 shifted copies (see the module docstring); None: on CPU only.
    kernel_init: initialiser of the kernel.
  """

  features: int
  im2col: bool | None = None
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """``x [n, H, W, C_in]`` -> ``[n, H, W, features]``."""
    n, h, w, c = x.shape
    kernel = self.param("kernel", self.kernel_init, (3, 3, c, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    im2col = jax.default_backend() == "cpu" if self.im2col is None else self.im2col
    if not im2col:
      y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return y + bias
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = jnp.concatenate([padded[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=-1)
    return patches @ kernel.reshape(9 * c, self.features) + bias


class ResBlock(nn.Module):
  """Pre-activation residual block with the time embedding added between its two convolutions."""

  features: int
  im2col: bool | None = None

  @nn.compact
  def __call__(self, x: Array, temb: Array) -> Array:
    """``x [n, H, W, C]``, ``temb [n or 1, E]`` -> ``[n, H, W, features]``."""
    h = nn.silu(nn.GroupNorm(num_groups=_groups(x.shape[-1]))(x))
    h = Conv3x3(self.features, self.im2col)(h)
    h = h + nn.Dense(self.features)(nn.silu(temb))[:, None, None, :]
    h = nn.silu(nn.GroupNorm(num_groups=_groups(self.features))(h))
    h = Conv3x3(self.features, self.im2col)(h)
    skip = x if x.shape[-1] == self.features else nn.Dense(self.features, name="skip")(x)
    return skip + h


def _downsample(x: Array) -> Array:
  """2×2 average pooling, stride 2."""
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _upsample(x: Array) -> Array:
  """Nearest-neighbour 2× upsampling."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class VelocityUNet(nn.Module):
  """Convolutional U-Net velocity field ``v(z, t)`` on flattened images (see the module docstring).

  Attributes:
    event_shape: ``(H, W, C)`` of one image; ``H`` and ``W`` divisible by ``2^(levels - 1)``.
    width: base channels (level 0); level ``l`` has ``width * mults[l]``.
    blocks: residual blocks per level (on the way down and on the way up).
    mults: channel multipliers per level; ``len(mults)`` resolutions (default two: ``H×W`` and ``H/2×W/2``).
    im2col: how convolutions are computed (:class:`Conv3x3`); None chooses by backend.
  """

  event_shape: tuple[int, int, int]
  width: int = 32
  blocks: int = 1
  mults: tuple[int, ...] = (1, 2)
  im2col: bool | None = None

  @nn.compact
  def __call__(self, z: Array, t: Array) -> Array:
    """``z [n, H·W·C]``, ``t [n]`` or ``[]`` -> velocity ``[n, H·W·C]``."""
    H, W, C = self.event_shape
    n = z.shape[0]
    chex.assert_shape(z, (n, H * W * C))
    x = z.reshape(n, H, W, C)
    temb = flow_lib.time_features(t)
    if temb.ndim == 1:
      temb = temb[None]
    temb = nn.Dense(4 * self.width, name="temb_1")(temb)
    temb = nn.Dense(4 * self.width, name="temb_2")(nn.silu(temb))

    h = Conv3x3(self.width, self.im2col, name="conv_in")(x)
    skips = []
    for level, mult in enumerate(self.mults):
      for _ in range(self.blocks):
        h = ResBlock(self.width * mult, self.im2col)(h, temb)
      skips.append(h)
      if level < len(self.mults) - 1:
        h = _downsample(h)
    h = ResBlock(self.width * self.mults[-1], self.im2col, name="bottom")(h, temb)
    for level in reversed(range(len(self.mults))):
      if level < len(self.mults) - 1:
        h = _upsample(h)
      h = jnp.concatenate([h, skips[level]], axis=-1)
      for _ in range(self.blocks):
        h = ResBlock(self.width * self.mults[level], self.im2col)(h, temb)
    h = nn.silu(nn.GroupNorm(num_groups=_groups(h.shape[-1]))(h))
    out = Conv3x3(C, self.im2col, kernel_init=nn.initializers.zeros, name="conv_out")(h)
    return out.reshape(n, H * W * C)


def make_unet(event_shape: Sequence[int], width: int = 32, blocks: int = 1,
              mults: Sequence[int] = (1, 2), im2col: bool | None = None) -> VelocityUNet:
  """A :class:`VelocityUNet` for images of ``event_shape`` ``(H, W, C)``; checks the shape first.

  Raises:
    ValueError: ``event_shape`` is not 3-D, or ``H``, ``W`` are not divisible by ``2^(len(mults) - 1)``.
  """
  event_shape = tuple(int(s) for s in event_shape)
  if len(event_shape) != 3 or min(event_shape) < 1:
    raise ValueError(f"velocity='unet' needs image samples with a 3-D event shape (H, W, C); got event shape "
                     f"{event_shape}: use velocity='mlp' for flat data")
  factor = 2 ** (len(tuple(mults)) - 1)
  if event_shape[0] % factor or event_shape[1] % factor:
    raise ValueError(f"velocity='unet' with {len(tuple(mults))} resolutions needs H and W divisible by "
                     f"{factor}; got event shape {event_shape}")
  if int(width) < 1 or int(blocks) < 1:
    raise ValueError(f"velocity='unet' needs width >= 1 and blocks (depth) >= 1; got {width}, {blocks}")
  return VelocityUNet(event_shape=event_shape, width=int(width), blocks=int(blocks),
                      mults=tuple(int(m) for m in mults), im2col=im2col)


def parameter_count(params) -> int:
  """Number of scalars in a params pytree."""
  return int(sum(math.prod(a.shape) for a in jax.tree.leaves(params)))
