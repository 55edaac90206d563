"""One deepalign run on a Cloud TPU slice: create the TPU VM, install, run on every host, delete.

  python -m launch.tpu --name=ppo-rec --accelerator_type=v5p-32 --zone=us-east5-a \\
      --provisioning=spot --config=configs/ppo_recovery.py:llama3_8b --workdir=gs://BUCKET/runs/ppo_rec \\
      [--dry_run] -- --config.model.hf_dir=gs://BUCKET/ckpt/llama3_8b

runs, with the gcloud CLI (`gcloud compute tpus tpu-vm` / `queued-resources`):
  1. create the slice: on demand, spot, or as a queued resource (waits until it is ACTIVE);
  2. pack this project (tar of setup.py, deepalign/, configs/, launch/), copy it to every worker
     and `pip install -e . jax[tpu]` there;
  3. start `python3 -m deepalign.main --config=... --workdir=gs://... --config.parallel.distributed.*`
     on all workers at once (`ssh --worker=all`): one JAX process per host, which
     `jax.distributed.initialize()` joins into one job (TPU VMs need no coordinator address; the
     process count is given so a wrong slice fails at start-up);
  4. stream worker 0's log until the run ends, with its exit status;
  5. delete the slice (`--keep` leaves it).
A spot or queued-spot slice that is reclaimed mid-run (the VM's state PREEMPTED, or the queued
resource SUSPENDED) is deleted, recreated and the same command rerun, up to `--max_restarts` times:
`deepalign.main` resumes from the last checkpoint in the same gs:// workdir (every host writes its
checkpoint shards there; SIGTERM at preemption saves one more).
`--dry_run` prints exactly these commands and runs nothing. `--xpk` runs on a GKE cluster through
xpk instead, and `--jobset=FILE` writes a GKE JobSet manifest for `kubectl apply -f FILE`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Callable, Sequence

from deepalign.errors import UserError
from launch import accelerators, jobset

PROVISIONING = ('on_demand', 'spot', 'queued', 'queued_spot')
PREEMPTED_STATES = {'PREEMPTED', 'TERMINATED', 'SUSPENDED', 'SUSPENDING', 'STOPPED'}
SOURCES = ('setup.py', 'README.md', 'deepalign', 'configs', 'launch')
TARBALL = 'deepalign-src.tar.gz'
REMOTE_DIR = '~/deepalign'
LOG, RC = '~/deepalign-run.log', '~/deepalign-run.rc'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project
JAX_TPU = 'jax[tpu]>=0.10.2,<0.11'  # the pin of setup.py, with the TPU runtime (libtpu)


def vm_name(text: str) -> str:
  """A valid TPU VM name from any text: lowercase letters, digits and '-', starting with a
  letter, at most 40 characters (queued resources and xpk workloads add suffixes)."""
  name = re.sub(r'[^a-z0-9-]+', '-', text.lower()).strip('-')
  name = re.sub(r'-{2,}', '-', name)
  if not name or not name[0].isalpha():
    name = f'da-{name}'
  return name[:40].rstrip('-')


@dataclasses.dataclass(frozen=True)
class Launch:
  name: str
  tpu: accelerators.Slice
  zone: str
  config: str                  # configs/FILE.py[:PRESET], relative to the project root
  workdir: str                 # gs://...
  overrides: tuple[str, ...] = ()  # --config.a.b=v flags of deepalign.main
  provisioning: str = 'on_demand'
  project: str = ''
  runtime_version: str = ''    # '' = the generation's (accelerators.GENERATIONS)

  @property
  def queued(self) -> bool:
    return self.provisioning.startswith('queued')

  @property
  def preemptible(self) -> bool:
    return self.provisioning in ('spot', 'queued_spot')


def _gcloud(launch: Launch, *args: str) -> list[str]:
  project = [f'--project={launch.project}'] if launch.project else []
  return ['gcloud', 'compute', 'tpus', *args, f'--zone={launch.zone}', *project]


def distributed_flags(tpu: accelerators.Slice) -> list[str]:
  """deepalign.main's jax.distributed settings for the slice: one process per host."""
  if not tpu.multi_host:
    return ['--config.parallel.distributed.enabled=False']
  return ['--config.parallel.distributed.enabled=True',
          f'--config.parallel.distributed.num_processes={tpu.hosts}']


def run_command(launch: Launch, python: str = 'python3') -> list[str]:
  """The deepalign.main command every host runs (the launch's overrides last: they win)."""
  return [python, '-m', 'deepalign.main', f'--config={launch.config}', f'--workdir={launch.workdir}',
          *distributed_flags(launch.tpu), *launch.overrides]


def create_commands(launch: Launch) -> list[list[str]]:
  version = launch.runtime_version or launch.tpu.runtime_version
  spot = ['--spot'] if launch.preemptible else []
  if launch.queued:
    return [_gcloud(launch, 'queued-resources', 'create', launch.name, f'--node-id={launch.name}',
                    f'--accelerator-type={launch.tpu.gcloud_type}', f'--runtime-version={version}', *spot)]
  return [_gcloud(launch, 'tpu-vm', 'create', launch.name, f'--accelerator-type={launch.tpu.gcloud_type}',
                  f'--version={version}', *spot)]


def state_command(launch: Launch) -> list[str]:
  """Prints the slice's state: ACTIVE (queued resource) / READY (VM), or a preempted one."""
  if launch.queued:
    return _gcloud(launch, 'queued-resources', 'describe', launch.name, '--format=value(state.state)')
  return _gcloud(launch, 'tpu-vm', 'describe', launch.name, '--format=value(state)')


def _ssh(launch: Launch, worker: str, command: str) -> list[str]:
  return _gcloud(launch, 'tpu-vm', 'ssh', launch.name, f'--worker={worker}', f'--command={command}')


def pack_command(tarball: str) -> list[str]:
  return ['tar', '-czf', tarball, '-C', ROOT, '--exclude=__pycache__', *SOURCES]


def install_commands(launch: Launch, tarball: str) -> list[list[str]]:
  unpack = (f'mkdir -p {REMOTE_DIR} && tar -xzf ~/{TARBALL} -C {REMOTE_DIR} && cd {REMOTE_DIR} && '
            f'python3 -m pip install -q -e {shlex.quote(".[gcs]")} {shlex.quote(JAX_TPU)}')  # gcsfs: gs:// workdirs
  return [_gcloud(launch, 'tpu-vm', 'scp', tarball, f'{launch.name}:~/{TARBALL}', '--worker=all'),
          _ssh(launch, 'all', unpack)]


def start_command(launch: Launch) -> list[str]:
  """Starts the run on every worker, detached (an ssh drop does not kill it); its exit status
  goes to RC when it ends."""
  body = f'{shlex.join(run_command(launch))} > {LOG} 2>&1; echo $? > {RC}'
  return _ssh(launch, 'all', f'cd {REMOTE_DIR} && rm -f {RC} && nohup sh -c {shlex.quote(body)} '
                             '> /dev/null 2>&1 &')


def logs_command(launch: Launch) -> list[str]:
  """Streams worker 0's log until the run ends; exits with the run's exit status."""
  return _ssh(launch, '0', f'tail -n +1 -F {LOG} & while [ ! -f {RC} ]; do sleep 5; done; '
                           f'sleep 2; kill $!; exit $(cat {RC})')


def delete_command(launch: Launch) -> list[str]:
  if launch.queued:
    return _gcloud(launch, 'queued-resources', 'delete', launch.name, '--force', '--quiet')
  return _gcloud(launch, 'tpu-vm', 'delete', launch.name, '--quiet')


def xpk_command(launch: Launch, cluster: str, image: str, max_restarts: int) -> list[str]:
  """`xpk workload create`: the same run as a JobSet on a GKE cluster with TPU node pools."""
  project = [f'--project={launch.project}'] if launch.project else []
  return ['xpk', 'workload', 'create', f'--cluster={cluster}', f'--workload={launch.name}',
          f'--tpu-type={launch.tpu.gcloud_type}', '--num-slices=1', f'--docker-image={image}',
          f'--zone={launch.zone}', *project, f'--max-restarts={max_restarts}',
          f'--command={shlex.join(run_command(launch))}']


def plan(launch: Launch, tarball: str, keep: bool = False) -> list[list[str] | str]:
  """Every command of one attempt, in order; strings are comments (what --dry_run prints)."""
  steps: list[list[str] | str] = [pack_command(tarball), *create_commands(launch)]
  if launch.queued:
    steps += ['# repeated until it prints ACTIVE:', state_command(launch)]
  steps += [*install_commands(launch, tarball), start_command(launch), logs_command(launch)]
  if launch.preemptible:
    steps += [f'# if the logs stop and this prints {"SUSPENDED" if launch.queued else "PREEMPTED"}: '
              'delete, then create / install / start / logs again (the run resumes from '
              f'{launch.workdir})', state_command(launch)]
  if not keep:
    steps.append(delete_command(launch))
  return steps


def format_plan(steps: Sequence[list[str] | str]) -> str:
  return '\n'.join(step if isinstance(step, str) else shlex.join(step) for step in steps) + '\n'


Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]


def _run(command: Sequence[str], capture: bool = False) -> subprocess.CompletedProcess:
  print('+ ' + shlex.join(command), flush=True)
  return subprocess.run(list(command), check=False, text=True,
                        stdout=subprocess.PIPE if capture else None)


def execute(launch: Launch, tarball: str, keep: bool = False, max_restarts: int = 5,
            poll_s: float = 30.0, run: Callable[..., subprocess.CompletedProcess] = _run) -> int:
  """Runs the plan; recreates a reclaimed spot slice and reruns (resuming) up to max_restarts times.
  Returns the run's exit status."""
  def must(command):
    proc = run(command)
    if proc.returncode != 0:
      raise UserError(f'{shlex.join(command)} failed with exit status {proc.returncode}')

  def state() -> str:
    proc = run(state_command(launch), capture=True)
    return (proc.stdout or '').strip().upper() if proc.returncode == 0 else ''

  must(pack_command(tarball))
  status = 1
  try:
    for attempt in range(max_restarts + 1):
      for command in create_commands(launch):
        must(command)
      if launch.queued:
        while (current := state()) != 'ACTIVE':
          if current in ('FAILED', *PREEMPTED_STATES):
            raise UserError(f'queued resource {launch.name} is {current}')
          time.sleep(poll_s)
      for command in install_commands(launch, tarball):
        must(command)
      must(start_command(launch))
      status = run(logs_command(launch)).returncode
      if status == 0 or not launch.preemptible or state() not in PREEMPTED_STATES:
        return status
      print(f'{launch.name} was preempted (attempt {attempt + 1} of {max_restarts + 1}); recreating it; '
            f'the run resumes from {launch.workdir}', flush=True)
      run(delete_command(launch))
    return status
  finally:
    if not keep:
      run(delete_command(launch))


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m launch.tpu', description=__doc__.split('\n\n')[0],
                              epilog='deepalign.main overrides (--config.a.b=v) go after --.')
  p.add_argument('--name', required=True, help='TPU VM / queued resource / workload name')
  p.add_argument('--accelerator_type', required=True, help='e.g. v5p-32, v5e-8 (= v5litepod-8), v4-16')
  p.add_argument('--zone', required=True, help='e.g. us-east5-a')
  p.add_argument('--project', default='', help='GCP project (default: gcloud\'s)')
  p.add_argument('--provisioning', default='on_demand', choices=PROVISIONING)
  p.add_argument('--runtime_version', default='', help='TPU software version (default: the generation\'s)')
  p.add_argument('--config', required=True, help='configs/FILE.py[:PRESET], relative to the project root')
  p.add_argument('--workdir', required=True, help='gs://BUCKET/...: shared by the hosts, kept across VMs')
  p.add_argument('--max_restarts', type=int, default=5, help='recreations of a reclaimed spot slice')
  p.add_argument('--keep', action='store_true', help='do not delete the slice at the end')
  p.add_argument('--dry_run', action='store_true', help='print the commands; run nothing')
  p.add_argument('--xpk', action='store_true', help='run through xpk on a GKE cluster (--cluster, --docker_image)')
  p.add_argument('--cluster', default='', help='the GKE cluster of --xpk')
  p.add_argument('--docker_image', default='', help='an image with deepalign installed (--xpk, --jobset)')
  p.add_argument('--jobset', default='', metavar='FILE', help='write a GKE JobSet manifest to FILE')
  p.add_argument('--tarball', default=os.path.join('/tmp', TARBALL), help=argparse.SUPPRESS)
  return p


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  rest = argv[argv.index('--') + 1:] if '--' in argv else []
  args = _parser().parse_args(argv[:argv.index('--')] if '--' in argv else argv)
  try:
    bad = [a for a in rest if not re.match(r'^--config\.[^=]+=', a)]
    if bad:
      raise UserError(f'unexpected arguments after --: {" ".join(bad)}; overrides look like --config.a.b=value')
    if not args.workdir.startswith('gs://'):
      raise UserError(f'--workdir={args.workdir} must be gs://...: every host writes its checkpoint '
                      'shards there, and a recreated slice resumes from it')
    launch = Launch(name=vm_name(args.name), tpu=accelerators.parse(args.accelerator_type), zone=args.zone,
                    config=args.config, workdir=args.workdir, overrides=tuple(rest),
                    provisioning=args.provisioning, project=args.project,
                    runtime_version=args.runtime_version)
    if (args.xpk or args.jobset) and not args.docker_image:
      raise UserError('--xpk and --jobset need --docker_image: an image with this project installed')
    if args.jobset:
      manifest = jobset.manifest(launch.name, launch.tpu, args.docker_image, run_command(launch),
                                 max_restarts=args.max_restarts)
      with open(args.jobset, 'w') as f:
        json.dump(manifest, f, indent=2)
        f.write('\n')
      print(f'# wrote {args.jobset}\n' + shlex.join(['kubectl', 'apply', '-f', args.jobset]))
      return 0
    if args.xpk:
      if not args.cluster:
        raise UserError('--xpk needs --cluster=NAME (a GKE cluster made by `xpk cluster create`)')
      command = xpk_command(launch, args.cluster, args.docker_image, args.max_restarts)
      if args.dry_run:
        print(shlex.join(command))
        return 0
      return _run(command).returncode
    if args.dry_run:
      sys.stdout.write(format_plan(plan(launch, args.tarball, args.keep)))
      return 0
    return execute(launch, args.tarball, args.keep, args.max_restarts)
  except UserError as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr, flush=True)
    return 2


if __name__ == '__main__':
  sys.exit(main())
