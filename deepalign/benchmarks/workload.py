"""The W-tiny workload at its defined sizes, or shrunk (smoke tests), for the PPO and DPO benchmarks.

At the default sizes everything is exactly /work/shared/W_TINY.md (models from `w_tiny.py`,
prompts from W_TINY_prompts.npy). Any size flag changes the workload to a reduced one of the
same shape: prompts are drawn with the same recipe (`default_rng(1234)`, ids in [3, vocab)),
and the JSON line says `"workload": "reduced"` so its figures are never mistaken for W-tiny's.
"""

import argparse
import dataclasses
import json
import sys
from typing import Any, Callable

import numpy as np

from deepalign.benchmarks import w_tiny
from deepalign.errors import UserError
from deepalign.models.config import ModelConfig

_FIRST_ORDINARY_ID = 3  # ids 0, 1, 2 are pad, bos, eos


@dataclasses.dataclass(frozen=True)
class Sizes:
  """batch B, prompt_len P, new_tokens N, and the decoder's sizes (W-tiny by default)."""
  batch: int = w_tiny.BATCH
  prompt_len: int = w_tiny.PROMPT_LEN
  new_tokens: int = w_tiny.NEW_TOKENS
  vocab: int = 2048
  hidden: int = 256
  layers: int = 4
  heads: int = 4
  head_dim: int = 64
  intermediate: int = 688

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if not isinstance(value, int) or value < 1:
        raise UserError(f'--{field.name}={value!r} must be a positive integer.')
    if self.vocab <= _FIRST_ORDINARY_ID:
      raise UserError(f'--vocab={self.vocab} leaves no ordinary token ids; use --vocab >= 4.')
    if self.prompt_len + self.new_tokens > 256:
      raise UserError(f'--prompt_len + --new_tokens = {self.prompt_len + self.new_tokens} exceeds '
                      'the 256 positions of the W-tiny model; shorten them.')

  @property
  def is_w_tiny(self) -> bool:
    return self == Sizes()

  def model_overrides(self) -> dict[str, Any]:
    """ModelConfig fields that differ from W-tiny (empty at the W-tiny sizes)."""
    if self.is_w_tiny:
      return {}
    return dict(vocab_size=self.vocab, hidden_size=self.hidden, num_layers=self.layers,
                num_heads=self.heads, num_kv_heads=self.heads, head_dim=self.head_dim,
                intermediate_size=self.intermediate)

  def config(self, head: str) -> ModelConfig:
    """The W-tiny policy ('lm'), value ('value') or reward ('score') config at these sizes."""
    build = {'lm': w_tiny.policy_config, 'value': w_tiny.value_config,
             'score': w_tiny.reward_config}[head]
    return build(**self.model_overrides())

  def describe(self) -> dict[str, Any]:
    return {'workload': 'w_tiny' if self.is_w_tiny else 'reduced', **dataclasses.asdict(self)}


def prompts(sizes: Sizes, path: str | None = None) -> np.ndarray:
  """int32 [B, P] prompts: W_TINY_prompts.npy at the W-tiny sizes, else the same recipe."""
  if sizes.batch == w_tiny.BATCH and sizes.prompt_len == w_tiny.PROMPT_LEN and sizes.vocab == 2048:
    return w_tiny.load_prompts(path)
  rng = np.random.default_rng(1234)
  return rng.integers(_FIRST_ORDINARY_ID, sizes.vocab, size=(sizes.batch, sizes.prompt_len),
                      dtype=np.int64).astype(np.int32)


def add_arguments(parser: argparse.ArgumentParser, iters: int, warmup: int) -> None:
  """--iters, --warmup, --prompts, --seed and one flag per `Sizes` field."""
  parser.add_argument('--iters', type=int, default=iters, help='timed calls (median reported)')
  parser.add_argument('--warmup', type=int, default=warmup,
                      help='untimed calls first (they absorb compilation)')
  parser.add_argument('--prompts', default=None, help='W_TINY_prompts.npy (default: ../shared)')
  parser.add_argument('--seed', type=int, default=0, help='base seed of inits and sampling')
  for field in dataclasses.fields(Sizes):
    parser.add_argument(f'--{field.name}', type=int, default=field.default,
                        help=f'reduced workload only (W-tiny: {field.default})')


def sizes_from_args(args: argparse.Namespace) -> Sizes:
  return Sizes(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Sizes)})


def report(measure: Callable[[], dict[str, Any]], summary: Callable[[dict[str, Any]], str]) -> int:
  """A benchmark CLI's ending: runs `measure`, prints `summary(result)` and, as the last line,
  the result as one JSON object; status 0. A UserError is one line on stderr, status 2 (as
  every entry point, not a traceback)."""
  try:
    result = measure()
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(summary(result))
  print(json.dumps(result))
  return 0
