"""Masked whitening (TRL masked_whiten)."""

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign.objectives import whitening


def test_by_hand():
  # valid (1, 2, 3): mean 2, unbiased var ((1 + 0 + 1) / 2) = 1
  x = jnp.array([[1.0, 2.0, 3.0, 100.0]])
  mask = jnp.array([[1, 1, 1, 0]])
  np.testing.assert_allclose(whitening.masked_whiten(x, mask), [[-1.0, 0.0, 1.0, 0.0]], atol=1e-6)
  np.testing.assert_allclose(whitening.masked_whiten(x, mask, shift_mean=False),
                             [[1.0, 2.0, 3.0, 0.0]], atol=1e-6)
  assert float(whitening.masked_var(x, mask)) == pytest.approx(1.0)
  assert float(whitening.masked_var(x, mask, unbiased=False)) == pytest.approx(2 / 3)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    x=hnp.arrays(np.float32, (3, 5), elements=st.floats(-100, 100, width=32)),
    mask=hnp.arrays(np.int32, (3, 5), elements=st.integers(0, 1)),
)
def test_zero_mean_unit_var_on_valid_tokens(x, mask):
  valid = mask > 0
  hypothesis.assume(valid.sum() >= 2 and np.var(x[valid].astype(np.float64)) > 1e-2)
  w = np.asarray(whitening.masked_whiten(jnp.asarray(x), jnp.asarray(mask), unbiased=False))
  assert abs(w[valid].mean()) < 1e-3
  assert w[valid].var() == pytest.approx(1.0, rel=1e-3)
  assert np.all(w[~valid] == 0.0)
  wu = np.asarray(whitening.masked_whiten(jnp.asarray(x), jnp.asarray(mask)))
  assert wu[valid].var(ddof=1) == pytest.approx(1.0, rel=1e-3)


def test_whiten_rows_uses_and_changes_the_selected_rows_only():
  x = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0], [-7.0, 0.5, 100.0]])
  mask = jnp.array([[1, 1, 0], [1, 1, 1], [1, 1, 0]])
  rows = jnp.array([True, True, False])
  out = np.asarray(whitening.whiten_rows(x, mask, rows))
  sel = np.asarray(mask, bool) & np.asarray(rows)[:, None]
  np.testing.assert_allclose(out[sel], np.asarray(whitening.masked_whiten(x, sel))[sel], rtol=1e-6)
  np.testing.assert_allclose(out[2], [-7.0, 0.5, 0.0])  # unselected row kept; off-mask 0
