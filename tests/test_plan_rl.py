"""`python -m deepalign.plan` on the Gemma-2 PPO + recovery preset cut to 1 layer and a 512-token
vocabulary: the preset's memory choices reach the compiled step (frozen models stored bfloat16,
the value head on the policy trunk, scanned layers) and `--largest` names the big arrays."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ppo_recovery_preset_plan_stores_frozen_models_bf16_and_lists_the_largest_arrays():
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  args = ['--config=configs/ppo_recovery.py:gemma2_2b', '--num_layers=1', '--vocab_size=512',
          '--largest=5', '--config.data.max_len=24', '--config.data.max_prompt_len=16',
          '--config.data.max_response_len=8', '--config.rl.max_new_tokens=8',
          '--config.train.batch_size=8', '--config.model.logits_chunk_size=4']
  proc = subprocess.run([sys.executable, '-m', 'deepalign.plan', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  result = json.loads(lines[-1])
  assert result['stage'] == 'ppo' and result['devices'] == 8 and result['fits']
  dtypes = {name: m['dtype'] for name, m in result['models'].items()}
  # rl.frozen_param_dtype: the reference, reward model and judge are stored in bfloat16; the
  # policy keeps float32 masters; ppo.value_init='shared': the critic is a [D, 1] head on the
  # policy's trunk, not a model.
  assert dtypes == {'policy': 'float32', 'reference': 'bfloat16', 'reward': 'bfloat16',
                    'judge': 'bfloat16', 'value': 'float32'}, dtypes
  assert result['models']['value']['params'] == 2304  # Gemma-2-2B's hidden size
  biggest = result['largest_buffers']
  assert len(biggest) == 5 and biggest[0]['bytes'] >= biggest[-1]['bytes'] > 0
  assert all(isinstance(e['shape'], list) and e['opcode'] for e in biggest)
  assert 'largest arrays (per device' in '\n'.join(lines[:-1])


def test_sft_plan_of_a_qwen2_architecture_on_the_16_chips_of_v5p_32():
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  args = ['--config=configs/sft.py:qwen2_5_7b', '--num_layers=1', '--vocab_size=512',
          '--config.data.max_len=16', '--config.train.batch_size=16',
          '--config.model.logits_chunk_size=4']
  proc = subprocess.run([sys.executable, '-m', 'deepalign.plan', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result['stage'] == 'sft' and result['topology'] == 'v5p-32' and result['devices'] == 16
  assert result['mesh'] == {'data': 1, 'fsdp': 16, 'tensor': 1} and result['fits']
  assert result['sources']['policy'].endswith('configs/hub/Qwen2.5-7B-Instruct')
  assert set(result['models']) == {'policy'}
