"""The feed-forward block: gated (SwiGLU / GeGLU: gate, up, down) or plain (GPT-2: up, down)."""

import flax.linen as nn
import jax

from deepalign.models.config import ModelConfig
from deepalign.models.sharding import BLT_MLP, constrain

ACTIVATION_FNS = {
    'silu': jax.nn.silu,
    'gelu_tanh': lambda x: jax.nn.gelu(x, approximate=True),  # HF gelu_pytorch_tanh / gelu_new
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),
    'relu': jax.nn.relu,
}


class MLP(nn.Module):
  """x [B, T, D] -> [B, T, D]: down(act(gate(x)) * up(x)) or down(act(up(x)))."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    init = nn.initializers.normal(cfg.initializer_range)
    dense = lambda features, axes, name: nn.Dense(
        features, use_bias=cfg.mlp_bias, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
        name=name, kernel_init=nn.with_logical_partitioning(init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))
    act = ACTIVATION_FNS[cfg.activation]
    up = dense(cfg.intermediate_size, ('embed', 'mlp'), 'up_proj')(x)
    if cfg.mlp_type == 'gated':
      h = act(dense(cfg.intermediate_size, ('embed', 'mlp'), 'gate_proj')(x)) * up
    else:
      h = act(up)
    h = constrain(h, BLT_MLP)
    return dense(cfg.hidden_size, ('mlp', 'embed'), 'down_proj')(h)
