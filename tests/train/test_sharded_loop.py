"""The loop on a 2-device mesh (fsdp=2, CPU devices): params sharded, same numbers as 1 device."""

import importlib.util
import pathlib

import pytest

_spec = importlib.util.spec_from_file_location(
    'tiny_sft', pathlib.Path(__file__).with_name('tiny_sft.py'))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

pytestmark = pytest.mark.slow


def test_fsdp_mesh_matches_one_device(tmp_path):
  single, log = tiny.run(tmp_path / 'one', 1)
  assert "'fsdp': 1" in log and ': 0 of ' in log
  sharded, log = tiny.run(tmp_path / 'two', 2, *tiny.mesh(data=1, fsdp=2))
  assert "'fsdp': 2" in log and ': 0 of ' not in log  # the embedding, kernels: split over fsdp
  tiny.assert_close(single, sharded)
