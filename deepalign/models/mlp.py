"""The feed-forward block: gated (SwiGLU / GeGLU: gate, up, down) or plain (GPT-2: up, down)."""

import flax.linen as nn
import jax

from deepalign.models import dense_dot, fused_projections
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
        name=name, dot_general=dense_dot.dot_general,
        kernel_init=nn.with_logical_partitioning(init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))
    act = ACTIVATION_FNS[cfg.activation]
    if self.has_variable('params', fused_projections.GATE_UP_KERNEL):
      gate, up = self._fused_gate_up(x)
      h = act(gate) * up
    elif cfg.mlp_type == 'gated':
      up = dense(cfg.intermediate_size, ('embed', 'mlp'), 'up_proj')(x)
      h = act(dense(cfg.intermediate_size, ('embed', 'mlp'), 'gate_proj')(x)) * up
    else:
      h = act(dense(cfg.intermediate_size, ('embed', 'mlp'), 'up_proj')(x))
    h = constrain(h, BLT_MLP)
    return dense(cfg.hidden_size, ('mlp', 'embed'), 'down_proj')(h)

  def _fused_gate_up(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """gate(x), up(x) [B, T, F] from one product with the fused [D, 2F] kernel of
    `fused_projections.fuse` (decode)."""
    cfg = self.config
    out = fused_projections.project(self, x, fused_projections.GATE_UP_KERNEL,
                                    fused_projections.GATE_UP_BIAS, cfg.compute_dtype)
    f = cfg.intermediate_size
    return out[..., :f], out[..., f:]
