"""Defaults every stage config shares: seed, train loop, optimizer, data, model, parallel.

Stage files (`sft.py`, `reward_model.py`, `dpo.py`, ...) start from `base_config`
and apply a preset with `apply_preset`; a field exists in exactly one place here so
that an override such as `--config.optimizer.learning_rate=3e-4` means the same thing
in every stage.
"""

from typing import Callable

import ml_collections

from deepalign import parallel
from deepalign.errors import UserError

ConfigDict = ml_collections.ConfigDict


def train_defaults() -> ConfigDict:
  """The generic loop (deepalign/train/loop.py): steps, logging, eval, checkpoints."""
  return ConfigDict({
      'num_steps': 100,          # batches consumed; the optimizer updates every grad_accum_steps
      'batch_size': 8,
      'log_every': 10,           # metrics.jsonl / TensorBoard / progress line
      'eval_every': 50,          # 0 = only at the end
      'eval_at_start': False,    # also evaluate the starting model (logged as step 0)
      'checkpoint_every': 50,    # 0 = only at the end (and on SIGTERM)
      'max_to_keep': 2,
      'async_checkpointing': True,
      'best_metric': '',         # e.g. 'eval/accuracy'; '' = no best-checkpoint directory
      'best_mode': 'max',        # 'max' or 'min'
      # numeric guards (deepalign/train/numeric_guard.py): an optimizer update with a non-finite
      # loss or gradient is skipped; after this many skipped in a row the run stops (0 = never)
      'max_bad_steps': 20,
      'loss_spike_factor': 0.0,  # > 0: also skip an update whose loss > this x its running median
      'loss_spike_window': 32,   # ... over the last this many applied updates
      # resume a workdir whose config.json names another stage or model architecture
      'allow_config_change': False,
  })


def optimizer_defaults() -> ConfigDict:
  """optax AdamW + warmup then cosine/linear/constant decay, clipping, accumulation."""
  return ConfigDict({
      'name': 'adamw',           # 'adamw', 'adam', 'sgd'
      'learning_rate': 1e-4,     # peak
      'schedule': 'cosine',      # 'cosine', 'linear', 'constant'
      'warmup_steps': 0,         # optimizer updates, not batches
      'end_lr_ratio': 0.0,       # final lr = end_lr_ratio * learning_rate (cosine/linear)
      'b1': 0.9,
      'b2': 0.999,
      'eps': 1e-8,
      'weight_decay': 0.0,
      'momentum': 0.0,           # sgd only
      'grad_clip_norm': 1.0,     # 0 = no clipping
      'grad_accum_steps': 1,     # optax.MultiSteps
  })


def model_defaults() -> ConfigDict:
  """The policy architecture, or the HF checkpoint it comes from.

  `hf_dir` = '' builds the architecture below from scratch; otherwise the
  architecture is read from `hf_dir/config.json` and these fields are ignored.
  `init_from` names the workdir of an earlier stage whose exported checkpoint
  (`DIR/export`) initialises this one (e.g. DPO starting from SFT).
  """
  return ConfigDict({
      'hf_dir': '',
      'init_from': '',
      'family': 'llama',
      'vocab_size': 0,           # 0 = the tokenizer's vocabulary
      'hidden_size': 64,
      'num_layers': 2,
      'num_heads': 4,
      'num_kv_heads': 4,
      'head_dim': 16,            # 0 = hidden_size // num_heads
      'intermediate_size': 128,
      'max_position_embeddings': 64,
      'rope_theta': 10000.0,
      'norm_eps': 1e-6,
      'tie_word_embeddings': False,
      'dtype': 'float32',        # activations / compute
      'param_dtype': 'float32',
      # Rematerialise layers in the backward: False / True (= 'full') or a policy name of
      # models/config.py REMAT_POLICIES ('dots_saveable', ...).
      'remat': 'none',
      # nn.scan over the layers (params stacked [L, ...]): one layer's program, compiled once;
      # in the decode loop each layer's fsdp weights are gathered inside the loop, one at a time.
      'scan_layers': False,
      # Unscanned, without remat: the last layer's queries, attention, output projection and MLP
      # only where a step reads (models/read_positions.py): W-tiny PPO 7%, DPO 4%, GRPO 4% faster
      # (one-process A/B). Same numbers to float32 rounding.
      'trim_last_layer': True,
      # Response tokens per chunk of the LM head + log-softmax on every log-prob path
      # (0 = all tokens at once): the [rows, tokens, vocab] float32 logits never exist whole.
      'logits_chunk_size': 0,
      # True: every model is built from its config.json alone, params are never read or allocated
      # (deepalign.plan compiles the step on their shapes); a training run needs False.
      'abstract': False,
  })


def data_defaults() -> ConfigDict:
  """Records, tokenizer and row shapes (deepalign/train/stage_data.py, deepalign/data)."""
  return ConfigDict({
      'source': 'harm_language',   # 'harm_language' (generated, no download) or 'tfds'
      # harm_language
      'language': 'toy',           # 'tiny', 'toy', 'large' (data/builders/harm_language.py SIZES)
      'num_train': 4096,
      'num_eval': 256,
      'data_seed': 0,
      'refusal_rate': 0.05,        # base-model SFT data: outright refusals
      'self_correction_rate': 0.05,  # ... and mid-response self-corrections
      'label_noise': 0.0,          # preference pairs with chosen/rejected swapped
      # tfds
      'builder': '',               # e.g. 'sft_conversations', 'hh_rlhf', 'pku_safe_rlhf'
      'builder_config': '',
      'safety_builder': 'safety_recovery',  # recovery records for the safety augmentation
      'safety_builder_config': '',
      'data_dir': '',
      'manual_dir': '',
      'on_bad_row': 'error',       # a malformed source row stops preparation; 'skip' drops and counts
      'train_split': 'train',
      'eval_split': 'test',
      'tokenizer_dir': '',         # default: model.hf_dir
      # rows
      'max_len': 32,
      'max_prompt_len': 8,
      'max_response_len': 16,
      'overflow': 'truncate_response',
      'pack': False,
      'worker_count': 0,
  })


def parallel_defaults() -> ConfigDict:
  """deepalign.parallel's section: topology (the slice a preset is sized for), mesh_shape,
  axis_types, rules, distributed."""
  return parallel.get_config()


def base_config(stage: str) -> ConfigDict:
  """Every field shared by all stages, with the stage name set."""
  config = ConfigDict()
  config.stage = stage
  config.preset = 'toy'
  config.seed = 0
  # A persistent XLA compilation cache (a local path or gs://...): a resumed or repeated run, and
  # the toy study's runs of the same shapes, read compiled programs back. '' = off.
  config.compilation_cache_dir = ''
  config.train = train_defaults()
  config.optimizer = optimizer_defaults()
  config.model = model_defaults()
  config.data = data_defaults()
  config.parallel = parallel_defaults()
  return config


def w_tiny_model(config: ConfigDict) -> None:
  """The W_TINY.md shapes: Llama-style, vocab 2048, hidden 256, 4 layers, 4x64 heads."""
  config.model.update({
      'family': 'llama', 'vocab_size': 2048, 'hidden_size': 256, 'num_layers': 4,
      'num_heads': 4, 'num_kv_heads': 4, 'head_dim': 64, 'intermediate_size': 688,
      'max_position_embeddings': 256, 'rope_theta': 10000.0, 'norm_eps': 1e-6,
      'tie_word_embeddings': False,
  })


def real_model(config: ConfigDict, hf_dir: str, topology: str, batch_size: int) -> None:
  """A real HF checkpoint on a TPU slice: float32 master weights and optimizer state, bfloat16
  compute, fully sharded (fsdp over every device of the slice, however many there are).

  Mixed precision: params (and so the AdamW moments) are stored in `model.param_dtype`
  ('float32', 12 bytes per trained parameter with its two moments, 16 with the float32 gradient)
  and cast to `model.dtype` ('bfloat16') for every matmul. bfloat16 master weights
  (`--config.model.param_dtype=bfloat16`, 6-8 bytes per parameter) halve that, but a 1e-6 AdamW
  step then rounds away on most weights (tests/train/test_mixed_precision.py: about 2% of
  N(0, 0.02) weights move). `hf_dir` is where the user's checkpoint goes; `deepalign.plan` reads its
  config.json there or, without one, the committed copy in configs/hub/<basename>/.
  """
  config.model.hf_dir = hf_dir
  config.model.dtype = 'bfloat16'
  config.model.param_dtype = 'float32'
  config.model.remat = 'full'
  config.model.scan_layers = True
  config.model.logits_chunk_size = 64
  config.parallel.topology = topology
  config.parallel.mesh_shape = {'data': 1, 'fsdp': -1, 'tensor': 1}
  config.parallel.distributed.enabled = True  # TPU pods: jax.distributed auto-detects the slice
  config.train.batch_size = batch_size
  config.train.async_checkpointing = True


def micro_batches(config: ConfigDict, accum: int) -> None:
  """The same updates in `accum` micro-batches: batch_size / accum rows per step, gradients
  averaged over `accum` steps (optax.MultiSteps), `accum` times the steps. What a chip with too
  little memory for a whole batch's activations runs (`python -m deepalign.plan`)."""
  config.train.batch_size //= accum
  config.train.num_steps *= accum
  for name in ('log_every', 'eval_every', 'checkpoint_every'):
    config.train[name] *= accum
  config.optimizer.grad_accum_steps = accum


REAL_MODELS: dict[str, Callable[[ConfigDict], None]] = {
    'gemma2_2b': lambda c: real_model(c, 'checkpoints/gemma-2-2b-it', 'v5e-8', 64),
    'llama3_8b': lambda c: real_model(c, 'checkpoints/Llama-3.1-8B-Instruct', 'v5p-32', 64),
    'qwen2_5_7b': lambda c: real_model(c, 'checkpoints/Qwen2.5-7B-Instruct', 'v5p-32', 64),
}


def apply_preset(config: ConfigDict, preset: str | None, file: str,
                 presets: dict[str, Callable[[ConfigDict], None]]) -> ConfigDict:
  """Applies `presets[preset]` (default 'toy') in place; unknown names are a UserError."""
  preset = preset or 'toy'
  if preset not in presets:
    raise UserError(f"unknown preset '{preset}' for configs/{file}; valid presets: "
                    f"{', '.join(sorted(presets))} (use --config=configs/{file}:PRESET)")
  config.preset = preset
  presets[preset](config)
  return config
