"""The W-tiny workload (shared/W_TINY.md): its models, prompts and sizes, for every benchmark."""

import os

import numpy as np

from deepalign.errors import UserError
from deepalign.models.config import ModelConfig
from deepalign.rollout.sampling_config import SamplingConfig

BATCH = 16
PROMPT_LEN = 32
NEW_TOKENS = 64
TEMPERATURE = 1.0
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
# Seeds of the HF reference inits (torch.manual_seed): policy 0, value 1, reward 2.
POLICY_SEED, VALUE_SEED, REWARD_SEED = 0, 1, 2
PROMPTS_FILE = 'W_TINY_prompts.npy'


def sampling_config(new_tokens: int = NEW_TOKENS) -> SamplingConfig:
  """W_TINY.md's sampling: multinomial at temperature 1, no top-k / top-p, exactly `new_tokens`
  tokens (EOS does not stop a row)."""
  return SamplingConfig(max_new_tokens=new_tokens, temperature=TEMPERATURE, top_k=0, top_p=1.0,
                        eos_id=EOS_ID, pad_id=PAD_ID, stop_at_eos=False)


def policy_config(**overrides) -> ModelConfig:
  """LlamaForCausalLM-equivalent policy (also the frozen reference)."""
  return ModelConfig.w_tiny(head='lm', **overrides)


def value_config(**overrides) -> ModelConfig:
  """Same backbone + Linear(256, 1) at every position."""
  return ModelConfig.w_tiny(head='value', **overrides)


def reward_config(**overrides) -> ModelConfig:
  """Same backbone + scalar head read at the last position."""
  return ModelConfig.w_tiny(head='score', **overrides)


def default_prompts_path() -> str:
  """../shared/W_TINY_prompts.npy relative to the repository root."""
  repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return os.path.join(os.path.dirname(repo_root), 'shared', PROMPTS_FILE)


def make_prompts() -> np.ndarray:
  """The prompt array as W_TINY.md defines it (what the .npy file stores)."""
  rng = np.random.default_rng(1234)
  return rng.integers(3, 2048, size=(BATCH, PROMPT_LEN), dtype=np.int64).astype(np.int32)


def load_prompts(path: str | None = None) -> np.ndarray:
  """int32 [16, 32] prompts from `path` (default: the shared file), checked against the spec."""
  path = path or default_prompts_path()
  if not os.path.exists(path):
    raise UserError(f'W-tiny prompts not found at {path}; pass --prompts=PATH to '
                    f'{PROMPTS_FILE} (shared/ beside the repository).')
  try:
    prompts = np.load(path)
  except (OSError, ValueError) as e:
    raise UserError(f'W-tiny prompts file {path} is not a readable .npy array ({e}).') from e
  if prompts.shape != (BATCH, PROMPT_LEN) or not np.issubdtype(prompts.dtype, np.integer):
    raise UserError(f'W-tiny prompts file {path} holds {prompts.dtype}{list(prompts.shape)}; '
                    f'expected int32[{BATCH}, {PROMPT_LEN}].')
  if prompts.min() < 3 or prompts.max() >= policy_config().vocab_size:
    raise UserError(f'W-tiny prompts file {path} has ids outside [3, 2048); regenerate it.')
  return prompts.astype(np.int32)


def generation_figures(timings) -> dict:
  """The "Generation only" figures of `timing.time_calls`' Timings: median_s, min_s, max_s,
  cpu_median_s, tokens_per_s and first_call_s (the same keys for deepalign and transformers)."""
  summary = {k.removeprefix('call_'): v for k, v in timings.summary('call').items()}
  return {**summary, 'tokens_per_s': BATCH * NEW_TOKENS / timings.median,
          'first_call_s': timings.first_call_s}
