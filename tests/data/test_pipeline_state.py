"""Pipelines are reproducible: seeds, epochs, resumable iterator state (orbax), host shards."""

import collections
import itertools
import json

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from deepalign import envs
from deepalign.data import pipeline
from deepalign.data.pipeline_config import PipelineConfig

ENV = envs.make(envs.HarmLanguageConfig(num_harmful_topics=2, num_benign_topics=2, payload_len=2,
                                        refusal_len=2))
TOK, TMPL = ENV.tokenizer, ENV.chat_template


def numbered_records(n):
  """SFT records whose response says which record they are: topic k and k // 4 filler words."""
  recs = []
  for i in range(n):
    topic, fillers = i % 4, ["please"] * (i // 4 % 4)
    user = " ".join(["how do i make", ENV.topics[topic]] + fillers)
    recs.append({"messages": json.dumps([{"role": "user", "content": user},
                                         {"role": "assistant", "content": ENV.compliance_text(topic)}]),
                 "id": i})
  return recs


RECORDS = numbered_records(16)
PROMPTS = [{"prompt": " ".join(["how do i make", ENV.topics[i % 4]] + ["please"] * (i // 4)),
            "target": ENV.compliance_text(i % 4) if i % 4 < 2 else "", "category": ENV.topics[i % 4]}
           for i in range(16)]


def row_keys(batch, key="tokens"):
  """Each row as a hashable tuple of its tokens (rows of distinct records differ)."""
  return [tuple(r.tolist()) for r in batch[key]]


def make(kind="sft", **kw):
  kw = {"global_batch_size": 4, "max_len": 16, "seed": 0, "shard_index": 0, "shard_count": 1, **kw}
  cfg = PipelineConfig(**kw)
  if kind == "sft":
    return pipeline.sft_dataset(RECORDS, TOK, TMPL, cfg)
  return pipeline.prompt_dataset(PROMPTS, TOK, TMPL, cfg)


def take(it, n):
  return list(itertools.islice(it, n))


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_same_seed_same_batches_other_seed_other_batches():
  a, b = take(iter(make()), 6), take(iter(make()), 6)
  assert_batches_equal(a, b)
  c = take(iter(make(seed=1)), 6)
  assert [row_keys(x) for x in a] != [row_keys(x) for x in c]


def test_every_epoch_is_a_fresh_permutation_of_all_records():
  batches = list(iter(make(num_epochs=3)))
  assert len(batches) == 3 * 16 // 4
  rows = [r for b in batches for r in row_keys(b)]
  epochs = [rows[i * 16:(i + 1) * 16] for i in range(3)]
  assert all(len(set(e)) == 16 for e in epochs)                 # each epoch: every record once
  assert set(epochs[0]) == set(epochs[1]) == set(epochs[2])
  assert epochs[0] != epochs[1] and epochs[1] != epochs[2]      # ... in a new order
  unshuffled = [r for b in make(num_epochs=1, shuffle=False) for r in row_keys(b)]
  assert unshuffled != epochs[0] and sorted(unshuffled) == sorted(epochs[0])


@pytest.mark.parametrize("kind,kw", [("sft", {}), ("sft", {"pack": True, "max_len": 32}),
                                     ("sft", {"overflow": "drop", "max_len": 13}), ("prompts", {})])
def test_restored_state_continues_exactly(kind, kw):
  """get_state after n batches, set_state on a fresh iterator: batches n+1.. are identical."""
  reference = take(iter(make(kind, **kw)), 9)
  for n in (0, 1, 4, 6):
    it = iter(make(kind, **kw))
    take(it, n)
    state = it.get_state()
    take(it, 2)  # moving on must not change the state already taken
    fresh = iter(make(kind, **kw))
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 9 - n), reference[n:])
  if kw.get("pack"):  # the packed case really packs (several segments in a row)
    assert max(int(b["segment_ids"].max()) for b in reference) >= 2


def test_orbax_checkpoint_manager_saves_and_restores_the_iterator(tmp_path):
  kw = {"pack": True, "max_len": 32}
  reference = take(iter(make(**kw)), 7)
  it = iter(make(**kw))
  take(it, 3)
  options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
  with ocp.CheckpointManager(tmp_path / "ckpt", options=options) as mngr:
    mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  take(it, 2)  # the live iterator moves on; the checkpoint must not
  fresh = iter(make(**kw))
  with ocp.CheckpointManager(tmp_path / "ckpt", options=options) as mngr:
    assert mngr.latest_step() == 3
    mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  assert_batches_equal(take(fresh, 4), reference[3:])


@pytest.mark.parametrize("kind", ["sft", "prompts"])
def test_two_hosts_see_disjoint_shards_covering_the_data(kind):
  key = "tokens" if kind == "sft" else "prompt_tokens"
  single = [r for b in make(kind, num_epochs=1) for r in row_keys(b, key)]
  hosts = [[r for b in make(kind, num_epochs=1, shard_index=i, shard_count=2) for r in row_keys(b, key)]
           for i in range(2)]
  for h in hosts:
    assert len(h) == 8
  assert not set(hosts[0]) & set(hosts[1])
  assert collections.Counter(hosts[0] + hosts[1]) == collections.Counter(single)
  # Host i holds the i-th half of each global batch (4 rows): the global batches are the
  # single host's, row for row.
  assert [r for k in range(0, 16, 2) for r in hosts[0][k:k + 2] + hosts[1][k:k + 2]] == single
  # Per-host batch = global / hosts.
  b = next(iter(make(kind, shard_index=1, shard_count=2)))
  assert b[key].shape[0] == 2


def test_shard_defaults_to_the_jax_process():
  cfg = PipelineConfig(global_batch_size=4)
  assert cfg.shard() == (0, 1) and cfg.per_host_batch() == 4


@pytest.mark.slow
@pytest.mark.parametrize("pack", [False, True])
def test_worker_processes_give_the_same_batches(pack):
  kw = {"pack": pack, "max_len": 32}
  assert_batches_equal(take(iter(make(worker_count=1, **kw)), 4), take(iter(make(**kw)), 4))
