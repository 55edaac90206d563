"""The W-tiny "Generation only" workload with transformers (torch, CPU), for the README comparison.

  python -m deepalign.benchmarks.hf_generation [--prompts=PATH] [--iters=10] [--warmup=2]

Needs the `hf` extra (torch, transformers); deepalign itself never imports them. Timed with
timing.time_calls as the JAX benchmarks are; prints seconds/call and tokens/s; the last line is
one JSON object.
"""

import json

from absl import app, flags

from deepalign.benchmarks import timing, w_tiny
from deepalign.benchmarks.generation_flags import ITERS, PROMPTS, WARMUP
from deepalign.errors import UserError

_THREADS = flags.DEFINE_integer('threads', 0, 'torch.set_num_threads (0 = torch default).')


def run(prompts_path: str | None, iters: int, warmup: int, threads: int) -> dict:
  """Times LlamaForCausalLM.generate on the W-tiny workload; returns the measurements."""
  try:
    import torch
    import transformers
  except ImportError as e:
    raise UserError(f'hf_generation needs torch and transformers ({e}); '
                    'pip install -e .[hf].') from e
  if threads:
    torch.set_num_threads(threads)
  cfg = w_tiny.policy_config()
  hf_config = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
      head_dim=cfg.head_dim, intermediate_size=cfg.intermediate_size,
      max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.norm_eps,
      rope_theta=cfg.rope_theta, tie_word_embeddings=False, attention_bias=False,
      mlp_bias=False, pad_token_id=cfg.pad_id, bos_token_id=cfg.bos_id, eos_token_id=cfg.eos_id)
  torch.manual_seed(w_tiny.POLICY_SEED)
  model = transformers.LlamaForCausalLM(hf_config).eval()
  prompts = torch.tensor(w_tiny.load_prompts(prompts_path), dtype=torch.long)
  mask = torch.ones_like(prompts)
  n = w_tiny.NEW_TOKENS
  holder = {}

  def call(i: int):
    del i  # torch's global generator advances by itself
    with torch.inference_mode():
      holder['out'] = model.generate(input_ids=prompts, attention_mask=mask, do_sample=True,
                                     temperature=w_tiny.TEMPERATURE, top_k=0, top_p=1.0,
                                     max_new_tokens=n, min_new_tokens=n, use_cache=True,
                                     pad_token_id=cfg.pad_id, eos_token_id=cfg.eos_id)
    return holder['out']  # a torch tensor: ready when returned (jax.block_until_ready passes it)

  timings = timing.time_calls(call, iters, warmup)
  if holder['out'].shape != (w_tiny.BATCH, w_tiny.PROMPT_LEN + n):
    raise RuntimeError(f'expected [16, 96] sequences, got {tuple(holder["out"].shape)}')
  return {
      'benchmark': 'w_tiny_generation', 'framework': 'transformers (torch)',
      'torch_version': torch.__version__, 'transformers_version': transformers.__version__,
      'torch_threads': torch.get_num_threads(), 'batch': w_tiny.BATCH,
      'prompt_len': w_tiny.PROMPT_LEN, 'new_tokens': n, 'iters': iters, 'warmup': warmup,
      **w_tiny.generation_figures(timings), 'peak_rss_mb': timing.peak_rss_mb(),
  }


def main(argv):
  del argv
  try:
    result = run(PROMPTS.value, ITERS.value, WARMUP.value, _THREADS.value)
  except UserError as e:
    raise app.UsageError(str(e)) from None
  print(f'transformers generate: {result["median_s"]:.4f} s/call (median of {result["iters"]}), '
        f'{result["tokens_per_s"]:.0f} tokens/s')
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
