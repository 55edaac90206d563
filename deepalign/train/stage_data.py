"""Where a stage's records, tokenizer and chat template come from, as the config names them.

`config.data.source`:
  'harm_language': the synthetic harm language (deepalign/envs), generated in memory from
    seeds: no download, no TFDS preparation; its word tokenizer and chat template.
  'tfds': a TFDS builder of deepalign/data/builders (`data.builder`, `data.builder_config`,
    prepared from `data.manual_dir` into `data.data_dir`, malformed rows as `data.on_bad_row`
    says); tokenizer and chat template from `data.tokenizer_dir` (default: the model's `hf_dir`).
    On several processes (a pod) only process 0 prepares; the others wait at a barrier, then read.
"""

import dataclasses
import json
from typing import Any

import jax
from jax.experimental import multihost_utils
import ml_collections

from deepalign.errors import UserError

SOURCES = ('harm_language', 'tfds')


@dataclasses.dataclass
class StageData:
  tokenizer: Any
  template: Any
  env: Any = None  # the HarmLanguage (exact harm judge) for 'harm_language', else None


def load(config: ml_collections.ConfigDict) -> StageData:
  """Tokenizer, template (and env) for `config.data`."""
  c = config.data
  if c.source not in SOURCES:
    raise UserError(f"config.data.source='{c.source}' is unknown; use one of {', '.join(SOURCES)}")
  if c.source == 'harm_language':
    from deepalign import envs
    from deepalign.data.builders import harm_language as hl_builder
    if c.language not in hl_builder.SIZES:
      raise UserError(f"config.data.language='{c.language}' is unknown; use one of "
                      f"{', '.join(hl_builder.SIZES)}")
    env = envs.make(hl_builder.SIZES[c.language][0])
    return StageData(env.tokenizer, env.chat_template, env)
  from deepalign.data import chat_template, tokenizer
  directory = c.tokenizer_dir or config.model.hf_dir
  if not directory:
    raise UserError('config.data.tokenizer_dir (or config.model.hf_dir) must name a directory '
                    'with tokenizer.json / tokenizer.model and tokenizer_config.json')
  return StageData(tokenizer.load_tokenizer(directory),
                   chat_template.ChatTemplate.from_pretrained(directory))


def records(config: ml_collections.ConfigDict, data: StageData, kind: str, split: str,
            builder: str = '', builder_config: str = '') -> Any:
  """A random-access source (list or TFDS data source) of `kind` records of `split`.

  kind: 'sft' | 'preference' | 'harmful_prompt' | 'recovery' (CONTRACTS "Records"), or for
    the harm language 'sft_aligned' (SFT records of the aligned behaviour: refuse harmful
    requests, help with benign ones).
  split: 'train' or 'eval' (mapped to `data.train_split` / `data.eval_split` for TFDS).
  """
  c = config.data
  if c.source == 'harm_language':
    env, seed = data.env, c.data_seed + (0 if split == 'train' else 1000)
    n = c.num_train if split == 'train' else c.num_eval
    if kind == 'sft':
      return env.sft_records(n, seed=seed, refusal_rate=c.refusal_rate,
                             self_correction_rate=c.self_correction_rate)
    if kind == 'sft_aligned':  # the aligned model's data: refuse harmful, help benign
      return [{'messages': json.dumps(json.loads(r['prompt']) + [{'role': 'assistant', 'content': r['chosen']}])}
              for r in env.preference_records(n, seed=seed)]
    if kind == 'preference':
      return env.preference_records(n, seed=seed, label_noise=c.label_noise)
    if kind == 'harmful_prompt':
      return env.prompt_records(n, seed=seed)
    if kind == 'recovery':  # full harmful responses: the stage draws the prefix depth itself
      return env.recovery_records(n, seed=seed, min_depth=env.compliance_len,
                                  max_depth=env.compliance_len)
    raise ValueError(kind)
  from deepalign.data import builders
  name = builder or c.builder
  if name not in builders.BUILDERS:
    raise UserError(f"config.data.builder='{name}' is unknown; use one of {', '.join(sorted(builders.BUILDERS))}")
  if not c.data_dir:
    raise UserError('config.data.data_dir must name the TFDS data directory (prepared datasets go there)')
  prepared = _prepared(config, name, (builder_config or c.builder_config) or None)
  return prepared.as_data_source(c.train_split if split == 'train' else c.eval_split)


def _prepared(config: ml_collections.ConfigDict, name: str, builder_config: str | None) -> Any:
  """The prepared TFDS builder `name`. Every process shares `data.data_dir`, and TFDS's final
  rename is not a lock: process 0 prepares, the others wait for it and only read."""
  from deepalign.data import builders
  c = config.data
  where = dict(data_dir=c.data_dir, config=builder_config, on_bad_row=c.on_bad_row)
  prepare = lambda: builders.prepare(builders.BUILDERS[name], manual_dir=c.manual_dir or None, **where)
  if jax.process_count() == 1:
    return prepare()
  barrier = f'deepalign: prepare {name} {builder_config} {c.on_bad_row}'
  if jax.process_index() == 0:
    try:
      return prepare()
    finally:  # also when it fails, so the other processes stop waiting and report it
      multihost_utils.sync_global_devices(barrier)
  multihost_utils.sync_global_devices(barrier)
  builder = builders.configured(builders.BUILDERS[name], **where)
  if not builder.is_prepared():
    raise UserError(f"config.data.builder='{name}' was not prepared in config.data.data_dir='{c.data_dir}' "
                    "by process 0; see its error, fix it and relaunch")
  return builder


def pipeline_config(config: ml_collections.ConfigDict, batch_size: int, seed_offset: int = 0,
                    **overrides: Any):
  """The grain PipelineConfig of `config.data` for a batch of `batch_size` rows."""
  from deepalign.data.pipeline_config import PipelineConfig
  c = config.data
  values = dict(global_batch_size=batch_size, max_len=c.max_len, max_prompt_len=c.max_prompt_len,
                max_response_len=c.max_response_len, overflow=c.overflow, pack=c.pack,
                seed=config.seed + seed_offset, worker_count=c.worker_count)
  values.update(overrides)
  return PipelineConfig(**values)
