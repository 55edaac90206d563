"""Malformed rows stop preparation with ONE line naming file, line and field, or are skipped and counted;
a failed preparation leaves nothing behind in the data dir."""

from __future__ import annotations

import gzip
import json
import logging
import os

import pytest

from deepalign.data import builders, manual_readers
from deepalign.errors import UserError

B = builders
HH = "harmless-base/train.jsonl"


def _write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data.encode("utf-8") if isinstance(data, str) else data)


def _line(row) -> str:
  return json.dumps(row, ensure_ascii=False) + "\n"


def _files_under(path) -> list[str]:
  found = []
  for root, _, files in os.walk(path):
    found += [os.path.relpath(os.path.join(root, f), path) for f in files]
  return sorted(found)


def _hh(chosen_last="Sure.", rejected_last="No.", prompt="\n\nHuman: Hi"):
  return {"chosen": f"{prompt}\n\nAssistant: {chosen_last}", "rejected": f"{prompt}\n\nAssistant: {rejected_last}"}


def _pku(**override):
  row = {"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 0, "safer_response_id": 1,
         "is_response_0_safe": False, "is_response_1_safe": True}
  return {**row, **override}


_REC = {"prompt": "p", "harmful_response": "h", "refusal": "r"}
_OK_CHAT = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]

# (builder, config, {file: content}, bad file, line, field)
CASES = {
    "hh_missing_field": (B.HhRlhf, None, {HH: _line(_hh()) + _line({"chosen": _hh()["chosen"]})}, HH, 2, "rejected"),
    "hh_prompts_differ": (B.HhRlhf, None, {HH: _line({"chosen": _hh()["chosen"],
                                                    "rejected": _hh(prompt="\n\nHuman: Bye")["rejected"]})}, HH, 1, "rejected"),
    "hh_not_a_dialogue": (B.HhRlhf, None, {HH: _line({"chosen": "just text", "rejected": "x"})}, HH, 1, "chosen"),
    "hh_text_before_first_turn": (B.HhRlhf, None, {HH: _line({"chosen": "Intro" + _hh()["chosen"], "rejected": _hh()["rejected"]})},
                                  HH, 1, "chosen"),
    "hh_invalid_utf8_gz": (B.HhRlhf, None, {"harmless-base/train.jsonl.gz": gzip.compress(
        _line(_hh()).encode() + b'{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: a\\n\\nAssistant: \xff\xfe"}\r\n')},
        "harmless-base/train.jsonl.gz", 2, "rejected"),
    "pku_wrong_type": (B.PkuSafeRlhf, "better", {"train.jsonl": _line(_pku()) + _line(_pku(better_response_id="1"))},
                       "train.jsonl", 2, "better_response_id"),
    "pku_flag_not_bool": (B.PkuSafeRlhf, "safer", {"d/train.jsonl": _line(_pku(is_response_1_safe=1))},
                          "d/train.jsonl", 1, "is_response_1_safe"),
    "pku_id_out_of_range": (B.PkuSafeRlhf, "better", {"train.jsonl": _line(_pku(safer_response_id=2))},
                            "train.jsonl", 1, "safer_response_id"),
    "advbench_header": (B.AdvBench, None, {"harmful_behaviors.csv": "goal,tgt\r\nx,y\r\n"}, "harmful_behaviors.csv", 1, "target"),
    "advbench_columns": (B.AdvBench, None, {"harmful_behaviors.csv": 'goal,target\r\n"two\r\nlines",t\r\na,b,c\r\n'},
                         "harmful_behaviors.csv", 4, "(row)"),
    "advbench_invalid_utf8": (B.AdvBench, None, {"harmful_behaviors.csv": b"goal,target\nok,t\n\xc3\x28bad,t\n"},
                              "harmful_behaviors.csv", 3, "goal"),
    "advbench_empty_goal": (B.AdvBench, None, {"harmful_behaviors.csv": "goal,target\n,t\n"}, "harmful_behaviors.csv", 2, "goal"),
    "advbench_open_quote": (B.AdvBench, None, {"harmful_behaviors.csv": 'goal,target\na,b\n"never closed,t\n'},
                            "harmful_behaviors.csv", 3, "(row)"),
    "hexphi_unquoted_comma": (B.HexPhi, None, {"category_3.csv": "fine\nnot, quoted\n"}, "category_3.csv", 2, "(row)"),
    "hexphi_invalid_utf8_txt": (B.HexPhi, None, {"category_4.txt": b"fine\n\xff\n"}, "category_4.txt", 2, "prompt"),
    "recovery_bad_json": (B.SafetyRecovery, None, {"train.jsonl": _line(_REC) + "\n" + '{"prompt": "p", \n'},
                          "train.jsonl", 3, "(row)"),
    "recovery_not_object": (B.SafetyRecovery, None, {"train.jsonl": '["p", "h", "r"]\n'}, "train.jsonl", 1, "(row)"),
    "recovery_lone_surrogate": (B.SafetyRecovery, None, {"train.jsonl": '{"prompt": "p", "harmful_response": "h", "refusal": "\\ud83d"}\n'},
                                "train.jsonl", 1, "refusal"),
    "recovery_empty": (B.SafetyRecovery, None, {"train.jsonl": _line({**_REC, "harmful_response": ""})},
                       "train.jsonl", 1, "harmful_response"),
    "recovery_null": (B.SafetyRecovery, None, {"train.jsonl": _line({**_REC, "prompt": None})}, "train.jsonl", 1, "prompt"),
    "sft_bad_role": (B.SftConversations, None, {"train.jsonl": _line({"messages": [_OK_CHAT[0], {"role": "tool", "content": "x"},
                                                                                 _OK_CHAT[1]]})},
                     "train.jsonl", 1, "messages[1].role"),
    "sft_last_not_assistant": (B.SftConversations, None, {"train.jsonl": _line({"messages": _OK_CHAT[:1] * 2})},
                               "train.jsonl", 1, "messages[1].role"),
    "sft_system_not_first": (B.SftConversations, None, {"train.jsonl": _line({"messages": [_OK_CHAT[0], {"role": "system", "content": "s"},
                                                                                         _OK_CHAT[1]]})},
                             "train.jsonl", 1, "messages[1].role"),
    "sft_content_type": (B.SftConversations, None, {"train.jsonl": _line({"messages": [{"role": "user", "content": 3}, _OK_CHAT[1]]})},
                         "train.jsonl", 1, "messages[0].content"),
    "sft_not_a_list": (B.SftConversations, None, {"train.jsonl": _line({"messages": "hi"})}, "train.jsonl", 1, "messages"),
    "sft_empty_answer": (B.SftConversations, None, {"train.jsonl": _line({"messages": [_OK_CHAT[0], {"role": "assistant", "content": ""}]})},
                         "train.jsonl", 1, "messages[1].content"),
    "sft_missing": (B.SftConversations, None, {"train.jsonl": _line({"conversation": _OK_CHAT})}, "train.jsonl", 1, "messages"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_row_error_names_file_line_and_field_and_leaves_nothing(tmp_path, case):
  cls, config, files, bad_file, line, field = CASES[case]
  for name, content in files.items():
    _write(str(tmp_path / "manual" / name), content)
  data_dir = tmp_path / "data"
  with pytest.raises(UserError) as e:
    builders.prepare(cls, data_dir=str(data_dir), manual_dir=str(tmp_path / "manual"), config=config)
  message = str(e.value)
  assert "\n" not in message
  assert f"{tmp_path / 'manual' / bad_file}, line {line}: field '{field}':" in message
  assert _files_under(data_dir) == []


def test_parquet_rows_are_numbered(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  os.makedirs(tmp_path / "m")
  pq.write_table(pa.Table.from_pylist([_pku(), _pku(response_0=None)]), str(tmp_path / "m" / "train.parquet"))
  with pytest.raises(UserError, match=r"train\.parquet, row 2: field 'response_0': is NoneType"):
    builders.prepare(B.PkuSafeRlhf, data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "m"))


def test_corrupt_gzip_names_the_file(tmp_path):
  _write(str(tmp_path / "m" / "train.jsonl.gz"), gzip.compress(_line(_REC).encode() * 50)[:40])
  with pytest.raises(UserError, match=r"train\.jsonl\.gz: cannot be read"):
    builders.prepare(B.SafetyRecovery, data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "m"))
  assert _files_under(tmp_path / "d") == []


def test_skip_drops_bad_rows_and_logs_once_per_file(tmp_path, caplog):
  _write(str(tmp_path / "m" / "train.jsonl"), _line(_REC) + "{broken\n" + _line({"prompt": "p"}) + _line({**_REC, "prompt": "q"}))
  _write(str(tmp_path / "m" / "test.jsonl"), _line({**_REC, "refusal": ""}) + _line({**_REC, "prompt": "t"}))
  with caplog.at_level(logging.WARNING):
    builder = builders.prepare(B.SafetyRecovery, data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "m"),
                               on_bad_row="skip")
  assert sorted(r["prompt"] for r in builders.read_split(builder, "train")) == ["p", "q"]
  assert [r["prompt"] for r in builders.read_split(builder, "test")] == ["t"]
  skips = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
  assert sorted(skips) == sorted([
      f"{tmp_path / 'm' / 'test.jsonl'}: skipped 1 malformed row(s) (on_bad_row='skip'); first at line 1, field 'refusal': is empty",
      f"{tmp_path / 'm' / 'train.jsonl'}: skipped 2 malformed row(s) (on_bad_row='skip'); first at line 2, field '(row)': "
      "not valid JSON (Expecting property name enclosed in double quotes at column 2)",
  ])
  # A dataset with rows dropped lives under its own config name, never as the complete one,
  # and says what it dropped.
  assert builder.builder_config.name == "default-skip_bad_rows"
  assert sorted(os.listdir(tmp_path / "d" / "safety_recovery")) == [".config", "default-skip_bad_rows"]
  reloaded = builders.SafetyRecovery(data_dir=str(tmp_path / "d"), config=builder.builder_config)
  assert reloaded.is_prepared() and reloaded.skipped_rows == {"test.jsonl": 1, "train.jsonl": 2}


def test_failure_keeps_other_prepared_datasets_intact(tmp_path):
  _write(str(tmp_path / "good" / "train.jsonl"), _line(_REC))
  _write(str(tmp_path / "bad" / "train.jsonl"), _line({**_REC, "refusal": 1}))
  data_dir = str(tmp_path / "d")
  builders.prepare(B.SafetyRecovery, data_dir=data_dir, manual_dir=str(tmp_path / "good"))
  before = _files_under(data_dir)
  with pytest.raises(UserError):
    builders.prepare(B.SafetyRecovery, data_dir=data_dir, manual_dir=str(tmp_path / "bad"), on_bad_row="error",
                     config=B.ManualConfig(name="other"))
  with pytest.raises(UserError):
    builders.prepare(B.SftConversations, data_dir=data_dir, manual_dir=str(tmp_path / "bad"))
  assert _files_under(data_dir) == before
  assert any(f.endswith("dataset_info.json") for f in before)


def test_failure_never_removes_a_dataset_completed_meanwhile(tmp_path, monkeypatch):
  """Two preparations racing on one data dir (hosts of a pod): the failing one keeps the other's result."""
  _write(str(tmp_path / "m" / "train.jsonl"), _line(_REC))
  data_dir = str(tmp_path / "d")
  from deepalign.data.builders import safety_recovery
  real = safety_recovery.to_record

  def finished_elsewhere_then_bad(row):
    monkeypatch.setattr(B.SafetyRecovery, "TO_RECORD", staticmethod(real))
    builders.prepare(B.SafetyRecovery, data_dir=data_dir, manual_dir=str(tmp_path / "m"))
    raise manual_readers.RowError("prompt", "is bad")

  monkeypatch.setattr(B.SafetyRecovery, "TO_RECORD", staticmethod(finished_elsewhere_then_bad))
  with pytest.raises(UserError, match="field 'prompt': is bad"):
    builders.prepare(B.SafetyRecovery, data_dir=data_dir, manual_dir=str(tmp_path / "m"),
                     config=B.ManualConfig(name="racing"))
  survivor = B.SafetyRecovery(data_dir=data_dir)
  assert survivor.is_prepared() and builders.read_split(survivor, "train") == [_REC]
  assert sorted(os.listdir(tmp_path / "d" / "safety_recovery")) == [".config", "default"]


def test_interrupted_preparation_leaves_nothing(tmp_path, monkeypatch):
  _write(str(tmp_path / "m" / "train.jsonl"), _line(_REC) * 3)

  def interrupted(row):
    raise KeyboardInterrupt

  monkeypatch.setattr(B.SafetyRecovery, "TO_RECORD", staticmethod(interrupted))
  with pytest.raises(KeyboardInterrupt):
    builders.prepare(B.SafetyRecovery, data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "m"))
  assert _files_under(tmp_path / "d") == [] and not os.path.exists(tmp_path / "d")


@pytest.mark.parametrize("setup, match", [
    ("missing", "does not exist or is empty"),
    ("empty", "does not exist or is empty"),
    ("none", "no manual_dir given"),
    ("wrong_files", "has no train.jsonl"),
])
def test_manual_dir_problems(tmp_path, setup, match):
  manual = tmp_path / "m"
  if setup == "empty":
    os.makedirs(manual)
  if setup == "wrong_files":
    _write(str(manual / "README.md"), "not data")
  with pytest.raises(UserError, match=match) as e:
    builders.prepare(B.SafetyRecovery, data_dir=str(tmp_path / "d"), manual_dir=None if setup == "none" else str(manual))
  assert "\n" not in str(e.value)
  assert _files_under(tmp_path / "d") == []


def test_bad_settings(tmp_path):
  _write(str(tmp_path / "m" / "train.jsonl"), _line(_pku()))
  with pytest.raises(UserError, match="on_bad_row='ignore'"):
    builders.prepare(B.PkuSafeRlhf, data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "m"), on_bad_row="ignore")
  with pytest.raises(UserError, match="preference='helpful'"):
    builders.prepare(B.PkuSafeRlhf, data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "m"),
                     config=B.PkuSafeRlhfConfig(name="mine", preference="helpful"))
  assert _files_under(tmp_path / "d") == []
