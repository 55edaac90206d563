"""dense_dot: the dense layers' contraction, with its own weight gradient, equals lax.dot_general's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign.models import dense_dot


@pytest.mark.parametrize('x_shape,w_shape,k', [((3, 5, 8), (8, 6), 1),       # nn.Dense
                                              ((2, 7, 4, 3), (4, 3, 5), 2),  # o_proj: heads x hd
                                              ((6, 8), (8, 2, 3), 1)])       # q_proj: [D, H, hd]
def test_values_and_gradients_match_lax(x_shape, w_shape, k, monkeypatch):
  monkeypatch.setattr(dense_dot, 'MIN_ELEMENTS', 1)  # small shapes through the custom gradient
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
  dims = ((tuple(range(len(x_shape) - k, len(x_shape))), tuple(range(k))), ((), ()))
  ours = lambda x, w: dense_dot.dot_general(x, w, dims)
  ref = lambda x, w: jax.lax.dot_general(x, w, dims)
  np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-6, atol=1e-6)
  cot = jnp.asarray(rng.standard_normal(ref(x, w).shape), jnp.float32)
  loss = lambda f: lambda x, w: jnp.sum(f(x, w) * cot)
  got = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(x, w)
  want = jax.grad(loss(ref), argnums=(0, 1))(x, w)
  for a, b in zip(got, want):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_the_weight_gradient_uses_a_materialised_transpose_on_one_device():
  """The backward of a large enough input holds the optimization barrier that keeps x^T
  row-major (the point of the module); small inputs and other contractions (batch axes, e.g.
  attention) are plain lax.dot_general."""
  small = jnp.ones((4, 16, 8))
  grad_small = jax.grad(lambda w: jnp.sum(dense_dot.dot_general(small, w, (((2,), (0,)), ((), ())))))
  assert 'optimization_barrier' not in str(jax.make_jaxpr(grad_small)(jnp.ones((8, 6))))
  x, w = jnp.ones((64, 64, 64)), jnp.ones((64, 6))
  dims = (((2,), (0,)), ((), ()))
  grad = jax.grad(lambda w: jnp.sum(dense_dot.dot_general(x, w, dims)))
  assert 'optimization_barrier' in str(jax.make_jaxpr(grad)(w))
  plain = jax.grad(lambda w: jnp.sum(jax.lax.dot_general(x, w, dims)))
  assert 'optimization_barrier' not in str(jax.make_jaxpr(plain)(w))
  batched = (((2,), (1,)), ((0,), (0,)))
  y = jnp.ones((64, 64, 3))
  attn = jax.grad(lambda y: jnp.sum(dense_dot.dot_general(x, y, batched)))
  assert 'optimization_barrier' not in str(jax.make_jaxpr(attn)(y))
