"""Mixed precision that learns: float32 master weights with bfloat16 compute (the real presets'
`model.dtype='bfloat16'`, `model.param_dtype='float32'`) take a 1e-6 AdamW step as the all-float32
model does; bfloat16 master weights round it away on almost every weight."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from configs import common
from deepalign import models
from deepalign.train.optimizer import build_optimizer

LR = 1e-6


def _step(dtype: str, param_dtype: str, params32, tokens) -> dict:
  """(params after one AdamW step at LR) - (params before), as float64, for one precision."""
  cfg = models.ModelConfig.tiny('llama', vocab_size=128, hidden_size=64, intermediate_size=128,
                                num_layers=1,
                                dtype=dtype, param_dtype=param_dtype)
  model = models.Transformer(cfg)
  params = jax.tree.map(lambda x: x.astype(param_dtype), params32)
  opt = common.optimizer_defaults()
  opt.update({'learning_rate': LR, 'schedule': 'constant'})
  tx, _ = build_optimizer(ml_collections.ConfigDict(opt), 10, guard=False)

  def loss_fn(p):
    logits = model.apply({'params': p}, tokens[:, :-1]).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  @jax.jit
  def step(p):
    grads = jax.grad(loss_fn)(p)
    updates, _ = tx.update(grads, tx.init(p), p)
    return optax.apply_updates(p, updates)

  new = step(params)
  return jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64), new, params)


def _kernels(tree) -> np.ndarray:
  """Every dense kernel's entries (all of them get a gradient; embedding rows of unseen ids do not)."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return np.concatenate([np.ravel(x) for path, x in flat if 'kernel' in jax.tree_util.keystr(path)])


def test_float32_masters_with_bfloat16_compute_move_as_float32_does():
  cfg = models.ModelConfig.tiny('llama', vocab_size=128, hidden_size=64, intermediate_size=128,
                                num_layers=1)
  params32 = models.init_params(models.Transformer(cfg), jax.random.PRNGKey(0))  # N(0, 0.02)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (8, 17), 0, 128)
  full = _kernels(_step('float32', 'float32', params32, tokens))
  mixed = _kernels(_step('bfloat16', 'float32', params32, tokens))
  bf16 = _kernels(_step('bfloat16', 'bfloat16', params32, tokens))

  moved = lambda delta: float(np.mean(delta != 0))
  assert moved(full) > 0.99
  assert moved(mixed) > 0.99  # float32 masters: every weight takes its ~1e-6 step
  # ... the same step: Adam's first update is ~ -lr * sign(g), and bf16 compute keeps the signs
  assert np.mean(np.sign(mixed) == np.sign(full)) > 0.9
  np.testing.assert_allclose(np.mean(np.abs(mixed)), np.mean(np.abs(full)), rtol=0.05)
  # bfloat16 masters: a 1e-6 step is below half an ulp of a N(0, 0.02) weight (0.02 * 2**-9 =
  # 4e-5), so it rounds away except on the few weights within ~2.6e-4 of zero.
  assert moved(bf16) < 0.05, moved(bf16)
  print(f'weights moved by one 1e-6 AdamW step: float32 {moved(full):.3f}, float32 masters + '
        f'bfloat16 compute {moved(mixed):.3f}, bfloat16 masters {moved(bf16):.3f}')


def test_real_presets_keep_float32_masters_and_bfloat16_compute():
  from configs import dpo, grpo, ppo_recovery, reward_model, sft
  for module in (sft, reward_model, dpo, ppo_recovery, grpo):
    for preset in common.REAL_MODELS:
      config = module.get_config(preset)
      assert (config.model.dtype, config.model.param_dtype) == ('bfloat16', 'float32'), (module, preset)
