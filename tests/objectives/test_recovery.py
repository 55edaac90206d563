"""Prefill-depth distributions, per-row capping, and the recovery reward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign.errors import UserError
from deepalign.objectives import recovery


def test_probs_by_hand():
  np.testing.assert_allclose(recovery.prefill_depth_probs('uniform', 3), [0.25] * 4)
  # (1/2, 1/4, 1/8) / (7/8)
  np.testing.assert_allclose(recovery.prefill_depth_probs('geometric', 2, p=0.5),
                             [4 / 7, 2 / 7, 1 / 7])
  np.testing.assert_allclose(recovery.prefill_depth_probs('fixed', depths=[2, 5, 5]),
                             [0, 0, 1 / 3, 0, 0, 2 / 3])
  np.testing.assert_allclose(recovery.prefill_depth_probs('qi', 4), [0.5, 0.125, 0.125, 0.125,
                                                                     0.125])
  qi = recovery.prefill_depth_probs('qi')
  assert qi.shape == (101,) and qi[0] == 0.5 and qi[100] == pytest.approx(0.005)
  # A minimum depth drops the shallower depths and renormalizes the rest.
  np.testing.assert_allclose(recovery.prefill_depth_probs('uniform', 4, min_depth=1),
                             [0, 0.25, 0.25, 0.25, 0.25])
  np.testing.assert_allclose(recovery.prefill_depth_probs('geometric', 2, p=0.5, min_depth=1),
                             [0, 2 / 3, 1 / 3])
  np.testing.assert_allclose(recovery.prefill_depth_probs('qi', 4, min_depth=1), [0] + [0.25] * 4)


@pytest.mark.parametrize('dist,kwargs', [
    ('uniform', dict(max_depth=3)),
    ('geometric', dict(max_depth=4, p=0.4)),
    ('fixed', dict(depths=(0, 3, 3))),
    ('qi', dict(max_depth=5)),
    ('uniform', dict(max_depth=8, min_depth=1)),
])
def test_sampling_frequencies_match_probs(dist, kwargs):
  n = 20000
  k = recovery.sample_prefill_depth(jax.random.key(0), jnp.full((n,), 1000), dist, **kwargs)
  probs = recovery.prefill_depth_probs(dist, **kwargs)
  freq = np.bincount(np.asarray(k), minlength=len(probs)) / n
  np.testing.assert_allclose(freq, probs, atol=0.015)


def test_capped_by_harmful_length_and_jittable():
  lens = jnp.array([0, 1, 3, 200] * 500)
  f = jax.jit(lambda key, l: recovery.sample_prefill_depth(key, l, 'qi'))
  k = np.asarray(f(jax.random.key(1), lens))
  lens = np.asarray(lens)
  assert k.dtype == np.int32
  assert np.all(k <= lens) and np.all(k >= 0)
  assert np.all(k[lens == 0] == 0)
  assert set(np.unique(k[lens == 1])) == {0, 1}
  # rows with a long harmful response see the uncapped qi distribution: mean 0.5 * 50.5
  assert k[lens == 200].mean() == pytest.approx(25.25, abs=3.0)
  # explicit keys: same key, same depths; a different key, different depths
  np.testing.assert_array_equal(k, f(jax.random.key(1), jnp.asarray(lens)))
  assert not np.array_equal(k, f(jax.random.key(2), jnp.asarray(lens)))


def test_bad_distributions():
  with pytest.raises(UserError, match='uniform'):
    recovery.prefill_depth_probs('poisson')
  with pytest.raises(UserError, match='depths'):
    recovery.prefill_depth_probs('fixed', depths=[])
  with pytest.raises(UserError, match='geometric'):
    recovery.prefill_depth_probs('geometric', 5, p=0.0)
  for bad in (-1, 6):
    with pytest.raises(UserError, match='min_depth'):
      recovery.prefill_depth_probs('uniform', 5, min_depth=bad)
  with pytest.raises(UserError, match='min_depth'):
    recovery.prefill_depth_probs('fixed', depths=[0, 2], min_depth=3)


def test_recovery_reward():
  np.testing.assert_allclose(recovery.recovery_reward(jnp.array([0.0, 0.5, 1.0]), 2.0),
                             [0.0, -1.0, -2.0])
