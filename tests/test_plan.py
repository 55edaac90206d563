"""`python -m deepalign.plan` on a 1-layer Gemma-2 (the real architecture, vocabulary cut to 512):
the printed figures, the JSON line and the exit status for a fitting and a non-fitting HBM."""

import json
import os
import subprocess
import sys

from deepalign import plan
from deepalign.models import hf_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ('--config=configs/sft.py:gemma2_2b', '--topology=v5e-8', '--num_layers=1', '--vocab_size=512',
        '--config.data.max_len=32', '--config.train.batch_size=8')


def _plan(*args: str) -> tuple[int, list[str], str]:
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  proc = subprocess.run([sys.executable, '-m', 'deepalign.plan', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  return proc.returncode, proc.stdout.strip().splitlines(), proc.stderr


def test_plan_reports_the_compiled_step_and_exits_1_when_it_does_not_fit():
  code, lines, err = _plan(*ARGS)
  assert code == 0, err[-3000:]
  result = json.loads(lines[-1])
  assert result['stage'] == 'sft' and result['topology'] == 'v5e-8' and result['devices'] == 8
  assert result['mesh'] == {'data': 1, 'fsdp': 8, 'tensor': 1}  # fsdp=-1 took the 8 chips
  assert result['sources']['policy'].endswith('configs/hub/gemma-2-2b-it')
  cfg = hf_config.load_hf_config('configs/hub/gemma-2-2b-it').replace(
      num_layers=1, layer_types=None, vocab_size=512)
  policy = result['models']['policy']
  assert policy['params'] == cfg.num_params() and policy['dtype'] == 'float32'
  # float32 params + two AdamW moments + the gradient accumulator of the preset's two
  # micro-batches (optax.MultiSteps), sharded 8 ways (not a replicated copy per device)
  assert result['state_bytes_per_device'] < 1.1 * 4 * 4 * cfg.num_params() / 8
  assert result['peak_bytes'] >= result['argument_bytes'] + result['temp_bytes'] - result['alias_bytes']
  assert result['temp_bytes'] > 0 and result['compile_s'] > 0
  assert result['collectives']['all-gather'] > 0  # fsdp gathers the weights
  assert result['fits'] and result['hbm_bytes'] == 16 << 30
  text = '\n'.join(lines[:-1])
  assert 'per device: arguments' in text and ': fits' in text and 'collectives: all-gather' in text

  small = result['peak_bytes'] / 2 / (1 << 30)
  code, lines, err = _plan(*ARGS, f'--hbm_gib={small}')  # the same program: the compilation cache
  assert code == 1, err[-3000:]
  tight = json.loads(lines[-1])
  assert not tight['fits'] and tight['peak_bytes'] == result['peak_bytes']
  assert 'DOES NOT FIT' in '\n'.join(lines[:-1])


def test_plan_usage_errors_are_one_line_and_status_2():
  code, _, err = _plan('--config=configs/sft.py:gemma2_2b', '--topology=v9z-4')
  assert code == 2 and err.strip().splitlines()[-1].startswith('error: topology') and 'v5e-8' in err


def test_collective_counts_read_hlo_opcodes():
  hlo = ('%ag = f32[8]{0} all-gather(f32[1]{0} %p), dimensions={0}\n'
         '%ars = f32[8]{0} all-reduce-start(f32[8]{0} %x), to_apply=%add\n'
         '%ard = f32[8]{0} all-reduce-done(f32[8]{0} %ars)\n'
         '%rs = f32[1]{0} reduce-scatter(f32[8]{0} %y), dimensions={0}\n')
  counts = plan.count_collectives(hlo)
  assert counts['all-gather'] == 1 and counts['all-reduce'] == 1 and counts['reduce-scatter'] == 1
  assert counts['all-to-all'] == 0
