"""DPO pairs that share their prompt: the step runs it once per pair, with the same numbers, and
only batches that truly share get marked (`pair_rows.mark_shared_prefix`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign import models
from deepalign.benchmarks import dpo as dpo_bench
from deepalign.models import ModelConfig, Transformer
from deepalign.train import pair_rows
from deepalign.train.sequence_logprobs import pair_sequence_logprobs

P, N = 6, 5


def _pairs(cfg: ModelConfig, b: int = 3) -> dict[str, np.ndarray]:
  prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (b, P))
  return dpo_bench.pair_batch(prompts, N, cfg.vocab_size)


def _params(model: Transformer):
  shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0)))
  rng = np.random.default_rng(2)
  return jax.tree.map(lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype), shapes)


@pytest.mark.parametrize('average', [False, True])
def test_shared_prompt_gives_the_full_rows_numbers_and_gradients(average):
  cfg = ModelConfig.tiny('llama')
  model = Transformer(cfg)
  params = _params(model)
  pairs = _pairs(cfg)
  marked = pair_rows.mark_shared_prefix(pairs, P)
  assert pair_rows.shared_prefix_width(marked) == P and pair_rows.shared_prefix_width(pairs) == 0

  def objective(batch):
    def f(p):
      chosen, rejected, nll = pair_sequence_logprobs(model, p, jax.tree.map(jnp.asarray, batch),
                                                     average)
      return jnp.sum(chosen - 2 * rejected) + nll, (chosen, rejected, nll)
    return jax.jit(jax.value_and_grad(f, has_aux=True))

  (_, full), full_grad = objective(pairs)(params)
  (_, shared), shared_grad = objective(marked)(params)
  for a, b in zip(shared, full):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(shared_grad), jax.tree.leaves(full_grad)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


def test_only_batches_that_share_are_marked():
  cfg = ModelConfig.tiny('llama')
  pairs = _pairs(cfg)
  assert pair_rows.shares_prefix(pairs, P)
  assert not pair_rows.shares_prefix(pairs, P + N)  # the whole row: nothing left to run per row
  assert not pair_rows.shares_prefix(pairs, 0)
  differs = {**pairs, 'rejected_tokens': pairs['rejected_tokens'].copy()}
  differs['rejected_tokens'][1, P - 1] += 1  # one pair's prompts differ in the last token
  assert not pair_rows.shares_prefix(differs, P) and pair_rows.shares_prefix(differs, P - 1)
  target = {**pairs, 'chosen_loss_mask': pairs['chosen_loss_mask'].copy()}
  target['chosen_loss_mask'][0, P - 2] = 1  # a loss target inside the shared columns
  assert not pair_rows.shares_prefix(target, P)
  packed = {**pairs, 'chosen_segment_ids': pairs['chosen_segment_ids'] * 2}  # segment id 2: packed
  assert not pair_rows.shares_prefix(packed, P)
  batch = pair_rows.mark_shared_prefix(differs, P)
  assert batch[pair_rows.SHARED_PREFIX].shape == (3, 0)


def test_the_iterator_wrapper_marks_and_resumes_like_its_source():
  cfg = ModelConfig.tiny('llama')
  pairs = _pairs(cfg)

  class Source:
    def __init__(self):
      self.i = 0
    def __next__(self):
      self.i += 1
      return pairs
    def get_state(self):
      return {'i': self.i}
    def set_state(self, state):
      self.i = state['i']

  source = Source()
  it = pair_rows.WithSharedPrefix(source, P)
  assert next(it)[pair_rows.SHARED_PREFIX].shape == (3, P)
  assert it.get_state() == {'i': 1}
  it.set_state({'i': 7})
  assert source.i == 7
