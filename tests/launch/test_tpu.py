"""launch/tpu.py: the gcloud commands of a v5p-32 and a v5e-8 run, spot recreate-and-resume, the
JobSet manifest, and the accelerator table behind them."""

import dataclasses
import json
import shlex
import subprocess

import pytest

from deepalign.errors import UserError
from launch import accelerators, jobset, tpu

ARGS = ['--name=PPO rec', '--zone=us-east5-a', '--config=configs/ppo_recovery.py:llama3_8b',
        '--workdir=gs://bucket/runs/ppo_rec']


def _dry_run(capsys, *flags, overrides=()):
  assert tpu.main([*ARGS, *flags, '--dry_run', '--', *overrides]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  return [shlex.split(line) for line in lines if not line.startswith('#')], lines


def _remote(command):
  """The shell command an `ssh --command=...` runs on the workers."""
  return next(a for a in command if a.startswith('--command='))[len('--command='):]


def test_accelerator_table():
  v5p = accelerators.parse('v5p-32')
  assert (v5p.gcloud_type, v5p.chips, v5p.hosts, v5p.chips_per_host, v5p.topology) == ('v5p-32', 16, 4, 4, '2x2x4')
  v5e = accelerators.parse('v5e-8')
  assert (v5e.gcloud_type, v5e.chips, v5e.hosts, v5e.chips_per_host, v5e.topology) == ('v5litepod-8', 8, 1, 8, '2x4')
  assert accelerators.parse('v5litepod-16').hosts == 4 and accelerators.parse('v5litepod-16').topology == '4x4'
  assert (accelerators.parse('v4-8').hosts, accelerators.parse('v4-8').topology) == (1, '2x2x1')
  assert accelerators.parse('v5p-128').topology == '4x4x4' and accelerators.parse('v6e-256').topology == '16x16'
  for bad in ('v5p-31', 'v5p-12', 'tpu-8', 'v9-8'):
    with pytest.raises(UserError):
      accelerators.parse(bad)


def test_v5p_32_spot_dry_run(capsys):
  commands, lines = _dry_run(capsys, '--accelerator_type=v5p-32', '--provisioning=spot',
                             overrides=['--config.train.num_steps=10'])
  pack, create, scp, install, start, logs, state, delete = commands
  assert pack[:2] == ['tar', '-czf'] and {'deepalign', 'configs', 'launch', 'setup.py'} <= set(pack)
  assert create[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'ppo-rec']
  assert {'--accelerator-type=v5p-32', '--version=v2-alpha-tpuv5', '--spot', '--zone=us-east5-a'} <= set(create)
  assert scp[3:5] == ['tpu-vm', 'scp'] and '--worker=all' in scp
  assert install[3:5] == ['tpu-vm', 'ssh'] and '--worker=all' in install
  assert 'pip install' in _remote(install) and 'jax[tpu]' in _remote(install)
  assert '--worker=all' in start
  body = shlex.split(_remote(start).split('nohup sh -c ', 1)[1])[0]  # 'python3 ... > LOG 2>&1; echo $? > RC'
  run = shlex.split(body.split(' > ', 1)[0])
  assert run[:5] == ['python3', '-m', 'deepalign.main', '--config=configs/ppo_recovery.py:llama3_8b',
                     '--workdir=gs://bucket/runs/ppo_rec']
  # One JAX process per host, joined by jax.distributed; the user's overrides last.
  assert '--config.parallel.distributed.enabled=True' in run
  assert '--config.parallel.distributed.num_processes=4' in run
  assert run[-1] == '--config.train.num_steps=10'
  assert '--worker=0' in logs and 'tail' in _remote(logs) and 'exit $(cat' in _remote(logs)
  assert state[3:5] == ['tpu-vm', 'describe'] and any('PREEMPTED' in line for line in lines)
  assert delete[3:6] == ['tpu-vm', 'delete', 'ppo-rec'] and '--quiet' in delete


def test_v5e_8_on_demand_and_queued_dry_run(capsys):
  commands, _ = _dry_run(capsys, '--accelerator_type=v5e-8', '--project=lab')
  create, start, delete = commands[1], commands[4], commands[-1]
  assert {'--accelerator-type=v5litepod-8', '--version=v2-alpha-tpuv5-lite', '--project=lab'} <= set(create)
  assert '--spot' not in create
  assert '--config.parallel.distributed.enabled=False' in _remote(start)  # one host: one process
  assert 'num_processes' not in _remote(start)
  assert delete[3:5] == ['tpu-vm', 'delete'] and len(commands) == 7  # no preemption check
  commands, _ = _dry_run(capsys, '--accelerator_type=v5e-8', '--provisioning=queued_spot')
  create, wait, delete = commands[1], commands[2], commands[-1]
  assert create[3:6] == ['queued-resources', 'create', 'ppo-rec'] and '--node-id=ppo-rec' in create
  assert {'--runtime-version=v2-alpha-tpuv5-lite', '--spot'} <= set(create)
  assert wait[3:5] == ['queued-resources', 'describe']
  assert delete[3:5] == ['queued-resources', 'delete'] and '--force' in delete


def test_refusals(capsys):
  assert tpu.main([*ARGS[:-1], '--workdir=/tmp/local', '--accelerator_type=v5p-32', '--dry_run']) == 2
  assert 'must be gs://' in capsys.readouterr().err
  assert tpu.main([*ARGS, '--accelerator_type=v5p-30', '--dry_run']) == 2
  assert tpu.main([*ARGS, '--accelerator_type=v5p-32', '--dry_run', '--', 'oops']) == 2
  assert tpu.main([*ARGS, '--accelerator_type=v5p-32', '--xpk', '--dry_run']) == 2
  assert '--docker_image' in capsys.readouterr().err


def test_spot_slice_is_recreated_and_the_run_resumed():
  """A fake gcloud: the first run's logs end with the VM reclaimed (ssh drops, state PREEMPTED);
  the slice is deleted, recreated, the same command started again, and the second attempt ends 0."""
  launch = tpu.Launch(name='rec', tpu=accelerators.parse('v5p-32'), zone='z', config='configs/ppo.py',
                      workdir='gs://b/w', provisioning='spot')
  calls, log_results = [], iter([255, 0])

  def fake(command, capture=False):
    calls.append(command)
    if command[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh'] and '--worker=0' in command:
      return subprocess.CompletedProcess(command, next(log_results), '')
    state = 'PREEMPTED' if command[4] == 'describe' else ''
    return subprocess.CompletedProcess(command, 0, state)

  assert tpu.execute(launch, '/tmp/src.tgz', run=fake) == 0
  verbs = [c[4] if c[0] == 'gcloud' else c[0] for c in calls]
  assert verbs == ['tar', 'create', 'scp', 'ssh', 'ssh', 'ssh', 'describe', 'delete',
                   'create', 'scp', 'ssh', 'ssh', 'ssh', 'delete']
  starts = [c for c in calls if c[4:5] == ['ssh'] and 'nohup' in _remote(c)]
  assert len(starts) == 2 and starts[0] == starts[1]  # the same command: it resumes from gs://b/w
  # An on-demand slice whose run fails is not retried.
  calls.clear()
  log_results = iter([1])
  assert tpu.execute(dataclasses.replace(launch, provisioning='on_demand'), '/tmp/src.tgz', run=fake) == 1
  assert [c[4] for c in calls if c[0] == 'gcloud'].count('create') == 1


def _get(tree, dotted):
  for part in dotted.split('.'):
    tree = tree[part]
  return tree


@pytest.mark.parametrize('accelerator, hosts, chips, topology, label', [
    ('v5p-32', 4, 4, '2x2x4', 'tpu-v5p-slice'), ('v5e-8', 1, 8, '2x4', 'tpu-v5-lite-podslice')])
def test_jobset_manifest(tmp_path, capsys, accelerator, hosts, chips, topology, label):
  path = tmp_path / 'jobset.json'
  assert tpu.main([*ARGS, f'--accelerator_type={accelerator}', '--docker_image=gcr.io/lab/deepalign:1',
                   f'--jobset={path}', '--', '--config.seed=3']) == 0
  assert f'kubectl apply -f {path}' in capsys.readouterr().out
  manifest = json.loads(path.read_text())
  for field in jobset.REQUIRED['jobset']:
    assert _get(manifest, field), field
  assert manifest['apiVersion'] == 'jobset.x-k8s.io/v1alpha2' and manifest['kind'] == 'JobSet'
  assert manifest['spec']['failurePolicy']['maxRestarts'] >= 1  # a preempted pod restarts the set
  (replicated,) = manifest['spec']['replicatedJobs']
  for field in jobset.REQUIRED['replicated_job']:
    assert _get(replicated, field), field
  job = replicated['template']['spec']
  assert job['parallelism'] == job['completions'] == hosts
  pod = job['template']['spec']
  assert pod['restartPolicy'] in ('Never', 'OnFailure')  # what batch/v1 Job allows
  assert pod['nodeSelector'] == {'cloud.google.com/gke-tpu-accelerator': label,
                                 'cloud.google.com/gke-tpu-topology': topology}
  (container,) = pod['containers']
  for field in jobset.REQUIRED['container']:
    assert container[field], field
  assert container['resources']['limits']['google.com/tpu'] == chips
  assert container['command'][:3] == ['python3', '-m', 'deepalign.main'] and container['command'][-1] == '--config.seed=3'
  assert ('--config.parallel.distributed.num_processes=4' in container['command']) == (hosts == 4)


def test_xpk_dry_run(capsys):
  assert tpu.main([*ARGS, '--accelerator_type=v5p-32', '--xpk', '--cluster=lab', '--docker_image=img',
                   '--dry_run']) == 0
  (command,) = [shlex.split(line) for line in capsys.readouterr().out.strip().splitlines()]
  assert command[:3] == ['xpk', 'workload', 'create']
  assert {'--cluster=lab', '--workload=ppo-rec', '--tpu-type=v5p-32', '--docker-image=img'} <= set(command)
  assert 'num_processes=4' in next(a for a in command if a.startswith('--command='))
