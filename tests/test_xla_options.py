"""scl.compiler_options: 512-bit vectors only on a CPU backend with AVX-512, never over the user's XLA_FLAGS;
a program compiled with the option computes what float64 numpy does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scl
from scl import reward_model as rm
from scl import xla_options


@pytest.mark.parametrize("backend, flags, cpu_flags, expected", [
    ("cpu", "", {"avx2", "avx512f"}, {"xla_cpu_prefer_vector_width": 512}),
    ("cpu", "--xla_force_host_platform_device_count=2", {"avx512f"}, {"xla_cpu_prefer_vector_width": 512}),
    ("cpu", "", {"avx2", "fma"}, {}),                                        # no AVX-512
    ("cpu", "--xla_cpu_prefer_vector_width=256", {"avx512f"}, {}),           # the user's choice stands
    ("gpu", "", {"avx512f"}, {}),
    ("tpu", "", {"avx512f"}, {}),
])
def test_compiler_options_follow_backend_cpu_and_xla_flags(monkeypatch, backend, flags, cpu_flags, expected):
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  monkeypatch.setattr(xla_options, "_cpu_flags", lambda: frozenset(cpu_flags))
  monkeypatch.setenv("XLA_FLAGS", flags)
  assert scl.compiler_options() == expected


def test_cpu_flags_are_read_from_cpuinfo_or_empty():
  flags = xla_options._cpu_flags()
  assert isinstance(flags, frozenset)
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
  except OSError:
    assert flags == frozenset()
    return
  line = next((l for l in text.splitlines() if l.startswith("flags")), None)
  assert flags == (frozenset(line.split(":", 1)[1].split()) if line else frozenset())


def test_program_compiled_with_512_bit_vectors_matches_float64_numpy():
  """The Bradley–Terry loss and gradient of a 2 -> 64 -> 1 SiLU net on 1,000 pairs, compiled with the option
  forced (ignored by XLA on a CPU without AVX-512), against a float64 numpy forward pass and central
  differences in float64 along random directions."""
  rng = np.random.default_rng(0)
  n = 1000
  x, z = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
  o = rng.integers(0, 2, n).astype(float)
  net = rm.mlp_reward((64,))
  params = net.init(jax.random.key(0), jnp.zeros((1, 2)))
  l2 = 1e-3
  fn = jax.jit(lambda p, x, z, o: rm.bt_value_and_grad(p, net.apply, x, z, o, l2),
               compiler_options={"xla_cpu_prefer_vector_width": 512})
  value, grad = fn(params, *(jnp.asarray(a, jnp.float32) for a in (x, z, o)))

  leaves, treedef = jax.tree_util.tree_flatten(params)
  shapes = [np.shape(a) for a in leaves]
  sizes = [int(np.prod(s)) for s in shapes]

  def loss64(flat):
    parts = np.split(flat, np.cumsum(sizes)[:-1])
    p = jax.tree_util.tree_unflatten(treedef, [a.reshape(s) for a, s in zip(parts, shapes)])
    d0, d1 = p["params"]["Dense_0"], p["params"]["Dense_1"]

    def r(u):
      a = u @ d0["kernel"] + d0["bias"]
      return (a / (1 + np.exp(-a))) @ d1["kernel"][:, 0] + d1["bias"][0]

    d = r(z) - r(x)
    nll = o * np.logaddexp(0, -d) + (1 - o) * np.logaddexp(0, d)
    return nll.mean() + 0.5 * l2 * np.sum(flat ** 2)

  flat64 = np.concatenate([np.asarray(a, np.float64).ravel() for a in leaves])
  np.testing.assert_allclose(float(value), loss64(flat64), rtol=1e-5)
  g = np.concatenate([np.asarray(a, np.float64).ravel() for a in jax.tree_util.tree_leaves(grad)])
  for _ in range(3):
    v = rng.normal(size=flat64.shape)
    h = 1e-5
    fd = (loss64(flat64 + h * v) - loss64(flat64 - h * v)) / (2 * h)
    np.testing.assert_allclose(g @ v, fd, rtol=1e-3, atol=1e-6)
