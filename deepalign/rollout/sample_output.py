"""`SampleOutput`: what `generate` returns (a pytree of arrays, so it can leave a jit)."""

import flax.struct
import jax


@flax.struct.dataclass
class SampleOutput:
  """Responses to B prompts, N = max_new_tokens columns.

  tokens [B, N] int32: response tokens, forced ones included, pad after the end.
  logprobs [B, N] float32: log-prob of each token under the temperature-scaled model
    distribution (forced tokens too: it is what the policy assigns them); 0 where no token.
  response_mask [B, N] int32: 1 = the token exists (forced or generated, up to and incl. EOS).
  generated_mask [B, N] int32: 1 = sampled by the policy (response_mask minus forced tokens);
    the only tokens a policy loss may touch.
  lengths [B] int32: number of existing tokens (sum of response_mask).
  ended_with_eos [B] bool: the last existing token is EOS.
  entropy [B, N] float32: entropy of the temperature-scaled next-token distribution each token
    was drawn from (forced tokens too); 0 where no token. Lets an RL step report the policy's
    entropy without a recomputing forward pass.
  """
  tokens: jax.Array
  logprobs: jax.Array
  response_mask: jax.Array
  generated_mask: jax.Array
  lengths: jax.Array
  ended_with_eos: jax.Array
  entropy: jax.Array
