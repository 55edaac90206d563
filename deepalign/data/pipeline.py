"""grain input pipelines: records -> fixed-shape batches (CONTRACTS "Batches") for one host.

    ds = pipeline.sft_dataset(source, tok, tmpl, PipelineConfig(global_batch_size=64, max_len=512))
    it = iter(ds)                     # grain DatasetIterator
    batch = next(it)                  # {'tokens': [B, T] int32, 'loss_mask': ..., ...}
    state = it.get_state(); it.set_state(state)
    # with the train checkpoint (orbax):
    mngr.save(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it), ...))

`source` is any random-access source of records: a TFDS `as_data_source` split
or a plain list of dicts. The order of records is a pure function of (seed,
source length): a fresh permutation per epoch (as grain's IndexSampler), epochs
concatenated, then cut into global batches of `global_batch_size` positions, of which
host i of n takes the i-th block of `global_batch_size / n`. So hosts see disjoint shards
that together cover every epoch, batch k of host i holds the same records whatever the
other hosts do, and the global batch k (the hosts' blocks in process order, as
`parallel.shard_batch` lays them out) is the same records in the same rows on any number of
hosts: a run's numbers do not depend on how many hosts it runs on. Packed SFT rows hold a
varying number of records, so there host i takes positions i, i + n, i + 2n, ... instead.

Built on grain's Dataset API rather than `DataLoader(operations=...)`: in grain
0.2.x DataLoader's operations (which packing needs) "break checkpointing" (its
own words), while every stage here, the packer included, has exact iterator
state. The iterator has the same `get_state`/`set_state` and orbax handlers.
"""

from __future__ import annotations

import functools
from typing import Any

from absl import flags
from absl import logging
import grain
import numpy as np

from deepalign.data import packing
from deepalign.data import padding
from deepalign.data import truncation
from deepalign.data.pipeline_config import PipelineConfig
from deepalign.data.tokenize_records import RecordTokenizer
from deepalign.errors import UserError

Example = dict[str, np.ndarray]


def host_records(source: Any, config: PipelineConfig) -> grain.MapDataset:
  """This host's records in order: shuffled per epoch from the seed, repeated, sharded."""
  if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
    raise UserError(f"pipeline source {type(source).__name__} is not random-access: pass a list of "
                    "records or a TFDS split from builder.as_data_source().")
  if len(source) == 0:
    raise UserError("pipeline source is empty: prepare the dataset split (tfds build) or pass records.")
  index, count = config.shard()
  ds = grain.MapDataset.source(source)
  if config.shuffle:
    ds = ds.seed(config.seed).shuffle()
  ds = ds.repeat(config.num_epochs)
  if config.pack or count == 1:
    return ds[index::count]
  block = config.per_host_batch()
  if config.num_epochs is not None:  # whole global batches only: every host then makes as many batches
    ds = ds[:len(ds) // (block * count) * block * count]
    if len(ds) == 0:  # shorter than one global batch: no batches, as with drop_remainder
      return ds
  # Round-robin over the block's offsets: host position j is global position
  # (j // block) * block * count + index * block + j % block.
  return grain.MapDataset.mix([ds[index * block + r::block * count] for r in range(block)])


def _dropped(what: str, tokens: int, budget: int, config: PipelineConfig) -> None:
  # Silent drops would bias a study's data mix; say so, without flooding the log.
  logging.log_every_n(logging.WARNING, "input pipeline dropped an over-long %s row (%d tokens, budget %d, "
                      "overflow=%s); raise max_len/max_prompt_len or change overflow (logged every 1000)",
                      1000, what, tokens, budget, config.overflow)


def _sft_example(record: Any, tok: RecordTokenizer, config: PipelineConfig) -> Example | None:
  prompt, response = tok.sft(record)
  fitted = truncation.fit(prompt, [response], config.max_len, config.overflow, tok.keep_head(prompt))
  if fitted is None:
    _dropped("sft", len(prompt) + len(response), config.max_len, config)
    return None
  prompt, (response,) = fitted
  if config.pack:
    return packing.unpadded_example(prompt, response)
  return padding.sft_row(prompt, response, config.max_len, tok.pad_id)


def _preference_example(record: Any, tok: RecordTokenizer, config: PipelineConfig) -> Example | None:
  prompt, chosen, rejected = tok.preference(record)
  fitted = truncation.fit(prompt, [chosen, rejected], config.max_len, config.overflow, tok.keep_head(prompt))
  if fitted is None:
    _dropped("preference", len(prompt) + max(len(chosen), len(rejected)), config.max_len, config)
    return None
  prompt, (chosen, rejected) = fitted
  out = {}
  for name, response in (("chosen", chosen), ("rejected", rejected)):
    for key, value in padding.sft_row(prompt, response, config.max_len, tok.pad_id).items():
      out[f"{name}_{key}"] = value
  return out


def _prompt_example(record: Any, tok: RecordTokenizer, config: PipelineConfig) -> Example | None:
  prompt, harmful_response, harmful = tok.rl_prompt(record)
  fitted = truncation.fit_prompt(prompt, config.max_prompt_len, config.overflow, tok.keep_head(prompt))
  if fitted is None:
    _dropped("prompt", len(prompt), config.max_prompt_len, config)
    return None
  prompt = fitted
  harmful_response = harmful_response[:config.max_response_len]
  prompt_tokens, prompt_mask = padding.left_pad(prompt, config.max_prompt_len, tok.pad_id)
  response_tokens, _ = padding.right_pad(harmful_response, config.max_response_len, tok.pad_id)
  return {
      "prompt_tokens": prompt_tokens, "prompt_mask": prompt_mask, "is_harmful": np.bool_(harmful),
      "harmful_response": response_tokens, "harmful_response_len": np.int32(len(harmful_response)),
  }


def _batched(examples: grain.MapDataset, config: PipelineConfig, batch_size: int,
             pack_pad_id: int | None = None) -> grain.IterDataset:
  # Records are read and tokenized in the consuming thread (no per-record thread
  # hand-off, which costs more than tokenizing a record); whole batches are then
  # made ahead by one background thread, overlapping the train step.
  # to_iter_dataset skips the None rows: those the overflow policy dropped.
  ds = examples.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if pack_pad_id is not None:
    ds = packing.PackedBatches(ds, batch_size, config.max_len, pack_pad_id)
  else:
    ds = ds.batch(batch_size, drop_remainder=True)  # static shapes
  if config.worker_count > 0:
    if not flags.FLAGS.is_parsed():
      # grain's worker processes read absl flags; outside absl.app (pytest, notebooks) nobody parsed them.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count))
  elif config.prefetch_batches > 0:
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=config.prefetch_batches)
  return ds


def sft_dataset(source: Any, tokenizer: Any, template: Any, config: PipelineConfig) -> grain.IterDataset:
  """SFT batches [B = per-host batch, T = max_len]: tokens, loss_mask, attention_mask, positions,
  segment_ids (all int32). config.pack: first-fit packed rows (a finite run's last batch may have
  empty rows); else one right-padded example per row (a last incomplete batch is dropped)."""
  tok = RecordTokenizer(tokenizer, template, config.add_bos)
  batch = config.per_host_batch()
  examples = host_records(source, config).map(functools.partial(_sft_example, tok=tok, config=config))
  return _batched(examples, config, batch, pack_pad_id=tok.pad_id if config.pack else None)


def preference_dataset(source: Any, tokenizer: Any, template: Any, config: PipelineConfig) -> grain.IterDataset:
  """Preference batches [B, T]: chosen_{tokens, loss_mask, attention_mask, positions, segment_ids}
  and rejected_{...}; both rows start with the same (identically cut) prompt."""
  tok = RecordTokenizer(tokenizer, template, config.add_bos)
  examples = host_records(source, config).map(functools.partial(_preference_example, tok=tok, config=config))
  return _batched(examples, config, config.per_host_batch())


def prompt_dataset(source: Any, tokenizer: Any, template: Any, config: PipelineConfig) -> grain.IterDataset:
  """RL prompt batches: prompt_tokens [B, P] LEFT-padded, prompt_mask [B, P], is_harmful [B] bool,
  harmful_response [B, R] right-padded, harmful_response_len [B] int32 (0 if none)."""
  tok = RecordTokenizer(tokenizer, template, config.add_bos)
  examples = host_records(source, config).map(functools.partial(_prompt_example, tok=tok, config=config))
  return _batched(examples, config, config.per_host_batch())
