"""Settings shared by every test module, the xdist workers and the subprocesses tests start, and
the fixtures that run test code in fresh Pythons with simulated CPU devices (the device-count flag
must be set before jax is imported): `run8` (one process) and `run_processes` (a real multi-process
JAX job).

One XLA compilation cache per test session: many tests (and the toy study's runs) compile the same
tiny-model functions in different processes, and reading a compiled program back is much cheaper
than compiling it again (about a third of the CPU time of the RL tests). The directory is made by
the session's first process, inherited by the xdist workers and subprocesses through the
environment, and removed at the end, so no run reads another session's programs. Set
JAX_COMPILATION_CACHE_DIR yourself to keep a cache across sessions.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_OWN_CACHE = 'JAX_COMPILATION_CACHE_DIR' not in os.environ
if _OWN_CACHE:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='deepalign-tests-xla-cache-')
if 'jax' in sys.modules:  # imported before this file (a plugin): the variable was read already
  sys.modules['jax'].config.update('jax_compilation_cache_dir',
                                   os.environ['JAX_COMPILATION_CACHE_DIR'])


def pytest_unconfigure(config):
  if _OWN_CACHE and not hasattr(config, 'workerinput'):  # the session's first process only
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)


def _cpu_env(devices: int, extra_env: dict | None = None) -> dict:
  """This environment, with `devices` CPU devices and the repository importable."""
  return {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
          'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
          **(extra_env or {})}


def run_python(code: str, devices: int = 8, timeout: float = 240,
               extra_env: dict | None = None) -> str:
  """Runs `code` in a subprocess with `devices` host devices; returns stdout; fails the test on error."""
  proc = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], env=_cpu_env(devices, extra_env),
                        capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)
  if proc.returncode != 0:
    pytest.fail(f'subprocess failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}')
  return proc.stdout


@pytest.fixture
def run8():
  return run_python


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_processes(code: str, *args: str, num_processes: int = 2, devices_per_process: int = 4,
                  timeout: float = 300) -> list[str]:
  """Runs `code` as `num_processes` Python processes of one JAX job (argv: process id, a free
  coordinator port, *args), each with `devices_per_process` CPU devices; each must print
  'ok <id>'. Returns their stdouts; fails the test if one fails or the job does not finish."""
  port = str(_free_port())
  env = _cpu_env(devices_per_process)
  procs = [subprocess.Popen([sys.executable, '-c', textwrap.dedent(code), str(i), port, *args],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(num_processes)]
  outs = []
  for proc in procs:
    try:
      outs.append(proc.communicate(timeout=timeout))
    except subprocess.TimeoutExpired:  # one process failing inside a collective hangs the others
      for p in procs:
        p.kill()
      pytest.fail(f'the {num_processes}-process job did not finish in {timeout} s')
  for i, (proc, (stdout, stderr)) in enumerate(zip(procs, outs)):
    assert proc.returncode == 0, f'process {i} failed:\n{stdout}\n{stderr[-3000:]}'
    assert f'ok {i}' in stdout, stdout
  return [stdout for stdout, _ in outs]


@pytest.fixture(name='run_processes')
def run_processes_fixture():
  return run_processes
