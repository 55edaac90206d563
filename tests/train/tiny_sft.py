"""The tiny SFT run the multi-device tests share: its flags and a subprocess runner.

Import it by path (tests run with --import-mode=importlib), as rl_fixtures is.
"""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np

from deepalign import models

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ['--config=configs/sft.py:toy', '--config.data.language=tiny', '--config.data.num_train=64',
        '--config.data.num_eval=16', '--config.data.max_len=24', '--config.model.hidden_size=32',
        '--config.model.num_layers=1', '--config.model.num_heads=2', '--config.model.num_kv_heads=2',
        '--config.model.intermediate_size=64', '--config.train.num_steps=4',
        '--config.train.batch_size=8', '--config.train.log_every=2', '--config.train.eval_every=0',
        '--config.train.checkpoint_every=0', '--config.sft.harm_eval=False',
        '--config.sft.eval_batches=1', '--config.sft.safety_fraction=0.25']


def mesh(data: int, fsdp: int) -> list[str]:
  return [f'--config.parallel.mesh_shape.data={data}', f'--config.parallel.mesh_shape.fsdp={fsdp}']


def invoke(workdir: pathlib.Path, devices: int, *extra: str) -> subprocess.CompletedProcess:
  """`deepalign.main` with the TINY flags + `extra` on `devices` simulated CPU devices."""
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  # --verbosity=0: the full absl log on stderr (the tests read the mesh and resume records),
  # not only the console's progress lines.
  return subprocess.run([sys.executable, '-m', 'deepalign.main', *TINY, *extra,
                         f'--workdir={workdir}', '--verbosity=0'], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)


def run(workdir: pathlib.Path, devices: int, *extra: str) -> tuple[dict, str]:
  """(exported params as numpy, stderr) of a successful `invoke`."""
  result = invoke(workdir, devices, *extra)
  assert result.returncode == 0, result.stderr[-3000:]
  _, params = models.from_pretrained(workdir / 'export')
  return jax.tree.map(np.asarray, params), result.stderr


def assert_close(a: dict, b: dict) -> None:
  """Same math, different reduction order across shards: equal to float32 rounding."""
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6), a, b)
