"""The U-Net velocity field of the image flow (``velocity="unet"``): shapes, training, and its errors.

Small networks (width 8, one block per level) so the file runs in well under a minute on 2 CPU cores; the
parameters of the shape checks are drawn with numpy from ``jax.eval_shape(net.init)`` (compiling flax's
random initialisers of a U-Net costs more than the forward pass), so nearly all the time is one training scan.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scl.hyper import Hyper
from scl.models import unet
from scl.models.flow import make_flow


def _random_params(net, d: int, scale: float = 0.1, seed: int = 0):
  """Parameters of ``net`` with the structure of ``net.init``'s, every entry ``N(0, scale²)`` (numpy)."""
  shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, d)), jnp.zeros((1,)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), jnp.float32), shapes)


@pytest.mark.parametrize("shape", [(32, 32, 3), (8, 8, 1)])
def test_velocity_is_flat_in_flat_out_at_image_shapes(shape):
  n, d = 4, int(np.prod(shape))
  net = unet.make_unet(shape, width=8, blocks=1)
  params = _random_params(net, d)
  apply = jax.jit(net.apply)
  z = jax.random.normal(jax.random.PRNGKey(1), (n, d))
  v = apply(params, z, jnp.linspace(0.0, 1.0, n))           # one time per row
  assert v.shape == (n, d) and v.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(v))) and float(jnp.std(v)) > 0
  # Each row's velocity depends on its own image and time only (no mixing across the batch, e.g. through
  # normalisation): reversing the batch reverses the output.
  np.testing.assert_allclose(apply(params, z[::-1], jnp.linspace(1.0, 0.0, n)), v[::-1], rtol=1e-4, atol=1e-5)
  # One time for the whole batch ([]) is the same as that time in every row.
  np.testing.assert_allclose(jax.jit(net.apply)(params, z, jnp.float32(0.25)),
                             apply(params, z, jnp.full((n,), 0.25)), rtol=1e-5, atol=1e-5)


def test_im2col_and_lax_conv_agree():
  net_a = unet.make_unet((8, 8, 2), width=8, im2col=True)
  net_b = unet.make_unet((8, 8, 2), width=8, im2col=False)
  params = _random_params(net_a, 128, seed=3)
  z = jax.random.normal(jax.random.PRNGKey(1), (4, 128))
  t = jnp.full((4,), 0.7)
  np.testing.assert_allclose(jax.jit(net_a.apply)(params, z, t), jax.jit(net_b.apply)(params, z, t),
                             rtol=1e-4, atol=1e-4)


def test_a_few_fit_steps_lower_the_flow_matching_loss():
  """``make_flow(velocity="unet").fit`` on 32 tiny images (two bar patterns plus noise) lowers the CFM loss,
  evaluated on a fixed batch of (noise, time, image) triples with the same network built independently."""
  shape, width = (8, 8, 1), 8
  bars = jnp.stack([jnp.zeros((8, 8)).at[:, 3:5].set(1.0), jnp.zeros((8, 8)).at[3:5, :].set(1.0)])
  x = 2.0 * bars[jnp.arange(32) % 2][..., None] - 1.0
  x = x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape)
  w = jnp.full((32,), 1 / 32)
  model = make_flow(shape, width=width, depth=1, train_steps=40, batch_size=32, sample_steps=4,
                    velocity="unet")
  net = unet.make_unet(shape, width=width, blocks=1)
  params = {"net": _random_params(net, 64, scale=0.05), "loc": jnp.zeros(shape), "scale": jnp.ones(shape)}

  z1 = jnp.tile(x.reshape(32, 64), (4, 1))
  z0 = jax.random.normal(jax.random.PRNGKey(4), (128, 64))
  t = jax.random.uniform(jax.random.PRNGKey(5), (128,))

  @jax.jit
  def cfm_loss(net_params):
    zt = (1 - t)[:, None] * z0 + t[:, None] * z1
    return jnp.mean(jnp.sum((net.apply(net_params, zt, t) - (z1 - z0)) ** 2, -1))

  before = float(cfm_loss(params["net"]))
  fitted = jax.jit(model.fit)(params, jax.random.PRNGKey(6), x, w, Hyper.defaults(lr=3e-3).arrays())
  after = float(cfm_loss(fitted["net"]))
  assert after < 0.75 * before, (before, after)
  samples = jax.jit(model.sample, static_argnums=2)(fitted, jax.random.PRNGKey(7), 5)
  assert samples.shape == (5,) + shape and bool(jnp.all(jnp.isfinite(samples)))


def test_unet_needs_an_image_event_shape():
  with pytest.raises(ValueError, match=r"velocity='unet' needs image samples with a 3-D event shape"):
    make_flow((2,), velocity="unet")
  with pytest.raises(ValueError, match="divisible by 2"):
    make_flow((7, 7, 1), velocity="unet")
  with pytest.raises(ValueError, match="unknown velocity 'conv'"):
    make_flow((8, 8, 1), velocity="conv")
