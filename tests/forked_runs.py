"""Many command lines for the price of one Python start: import jax and deepalign once, then fork.

    results = forked_runs.run([{'entry': 'deepalign.main', 'argv': [...]}, ...])
    # [{'rc': 2, 'stderr': 'error: ...', 'stdout': '', 'seconds': 0.4}, ...]

`run` starts ONE fresh Python (this file as a script) that imports the heavy libraries (jax,
flax, orbax, grain, the deepalign stages) but never touches a device, then runs each command in
a forked child, in order: the child imports the entry module (its absl flags), runs it as
`python -m ENTRY ARGV` would (runpy, as __main__), and exits; stdout/stderr go to files the parent reads back. A
command killed by a signal has rc = -signal (the crash tests SIGKILL children on purpose). Each
command costs its own work only, not an interpreter start and a jax import (~3 s each here).
"""

import importlib
import json
import os
import pathlib
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Imported before forking; none defines absl flags (deepalign.main and prepare_main do: they
# are imported in the child).
PRELOAD = ('jax', 'jax.numpy', 'flax.linen', 'optax', 'orbax.checkpoint', 'grain', 'numpy',
           'ml_collections', 'deepalign.models', 'deepalign.train.loop', 'deepalign.train.stages',
           'deepalign.train.sft', 'deepalign.train.reward_model', 'deepalign.train.dpo',
           'deepalign.train.rl.stage', 'deepalign.train.linear_regression',
           'deepalign.study.safety_eval', 'deepalign.data.builders')


def _child(command: dict, out_path: str, err_path: str) -> int:
  out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
  err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
  os.dup2(out, 1)
  os.dup2(err, 2)
  os.environ.update(command.get('env', {}))
  os.chdir(command.get('cwd', str(ROOT)))
  entry, argv = command['entry'], list(command['argv'])
  try:
    sys.argv = [entry, *argv]
    sys.path.insert(0, os.getcwd())  # as `python -m` does
    runpy.run_module(entry, run_name='__main__', alter_sys=True)  # exactly `python -m ENTRY`
    return 0
  except SystemExit as e:
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    return 1


def _serve(commands: list[dict]) -> list[dict]:
  for name in PRELOAD:
    try:
      importlib.import_module(name)
    except ImportError:
      pass
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for i, command in enumerate(commands):
      out_path, err_path = os.path.join(tmp, f'{i}.out'), os.path.join(tmp, f'{i}.err')
      start = time.perf_counter()
      sys.stdout.flush()
      sys.stderr.flush()
      pid = os.fork()
      if pid == 0:
        code = 1
        try:
          code = _child(command, out_path, err_path)
        finally:
          try:
            sys.stdout.flush()
            sys.stderr.flush()
          finally:
            os._exit(code)  # pylint: disable=protected-access
      _, status = os.waitpid(pid, 0)
      rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
      with open(out_path, errors='replace') as f_out, open(err_path, errors='replace') as f_err:
        results.append({'rc': rc, 'stdout': f_out.read(), 'stderr': f_err.read(),
                        'seconds': time.perf_counter() - start})
  return results


def run(commands: list[dict], timeout: float = 600, devices: int = 1) -> list[dict]:
  """Runs `commands` (dicts: entry, argv, optional env, cwd) in one fresh Python."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         # every program into the session's compilation cache: a resumed child compiles nothing
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
         'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}
  with tempfile.NamedTemporaryFile('w', suffix='.json', delete=False) as f:
    json.dump(commands, f)
  try:
    proc = subprocess.run([sys.executable, __file__, f.name], env=env, cwd=ROOT, timeout=timeout,
                          capture_output=True, text=True, check=False)
  finally:
    os.unlink(f.name)
  if proc.returncode != 0:
    raise RuntimeError(f'forked_runs failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == '__main__':
  signal.signal(signal.SIGINT, signal.SIG_DFL)
  with open(sys.argv[1]) as f_in:
    _results = _serve(json.load(f_in))
  print(json.dumps(_results))
