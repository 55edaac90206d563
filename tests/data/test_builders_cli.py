"""`python -m deepalign.data.builders.prepare_main`: prepares and summarises, or one error line and status 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from deepalign.data.builders import prepare_main
from deepalign.errors import UserError

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_run_summarises_splits_and_skips(tmp_path):
  os.makedirs(tmp_path / "m")
  (tmp_path / "m" / "harmful_behaviors.csv").write_text('goal,target\n"a, b",t\nx,y,z\n', encoding="utf-8")
  summary = prepare_main.run("adv_bench", None, str(tmp_path / "m"), str(tmp_path / "d"), "skip")
  assert summary.splitlines()[1:] == ["  train: 1 records", "  skipped 1 malformed row(s) in harmful_behaviors.csv"]
  with pytest.raises(UserError, match="--config=nope is not a config of adv_bench"):
    prepare_main.run("adv_bench", "nope", str(tmp_path / "m"), str(tmp_path / "d"), "error")


@pytest.fixture
def info_records():
  """absl's logger at INFO, as the command leaves it after parsing its flags (restored after)."""
  import logging
  from absl import logging as absl_logging
  absl = logging.getLogger("absl")
  before = absl.level
  absl_logging.set_verbosity(absl_logging.INFO)
  yield
  absl.setLevel(before)


def test_progress_lines_while_preparing(tmp_path, info_records):
  import io
  from deepalign.console import Console
  os.makedirs(tmp_path / "m")
  (tmp_path / "m" / "harmful_behaviors.csv").write_text("goal,target\na,t\nb,u\n", encoding="utf-8")
  stream, out = io.StringIO(), io.StringIO()
  console = Console(stream=stream, out=out, live=False)
  with console.session():
    prepare_main.run("adv_bench", None, str(tmp_path / "m"), str(tmp_path / "d"), "error", console=console)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "prepare adv_bench: started" and lines[-1].startswith("prepare adv_bench: done in ")
    assert "  train: 2 records written (0:00 elapsed)" in lines
    assert not [l for l in lines if "Variant folder" in l or "%|" in l or l.startswith(("I1", "W1"))]
    assert out.getvalue() == ""  # TFDS's own prints went to the log, not into the summary
    prepare_main.run("adv_bench", None, str(tmp_path / "m"), str(tmp_path / "d"), "error", console=console)
  assert stream.getvalue().splitlines()[len(lines):] == ["prepare adv_bench: already prepared"]


def test_bad_row_exits_2_with_one_line(tmp_path):
  os.makedirs(tmp_path / "m")
  (tmp_path / "m" / "train.jsonl").write_text('{"prompt": "p", "harmful_response": "h"}\n', encoding="utf-8")
  result = subprocess.run(
      [sys.executable, "-m", "deepalign.data.builders.prepare_main", "--dataset=safety_recovery",
       f"--manual_dir={tmp_path / 'm'}", f"--data_dir={tmp_path / 'd'}"],
      capture_output=True, text=True, cwd=_ROOT, env={**os.environ, "PYTHONPATH": _ROOT}, timeout=120)
  assert result.returncode == 2
  errors = [line for line in result.stderr.replace("\r", "\n").splitlines() if "error:" in line]
  assert errors == [f"error: {tmp_path / 'm' / 'train.jsonl'}, line 1: field 'refusal': is missing (row has: "
                    "harmful_response, prompt); fix or remove the row, or prepare with on_bad_row='skip'"]
  assert not os.path.exists(tmp_path / "d")
