"""Settings shared by every test module, the xdist workers and the subprocesses tests start.

One XLA compilation cache per test session: many tests (and the toy study's runs) compile the same
tiny-model functions in different processes, and reading a compiled program back is much cheaper
than compiling it again (about a third of the CPU time of the RL tests). The directory is made by
the session's first process, inherited by the xdist workers and subprocesses through the
environment, and removed at the end, so no run reads another session's programs. Set
JAX_COMPILATION_CACHE_DIR yourself to keep a cache across sessions.
"""

import os
import shutil
import sys
import tempfile

_OWN_CACHE = 'JAX_COMPILATION_CACHE_DIR' not in os.environ
if _OWN_CACHE:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='deepalign-tests-xla-cache-')
if 'jax' in sys.modules:  # imported before this file (a plugin): the variable was read already
  sys.modules['jax'].config.update('jax_compilation_cache_dir',
                                   os.environ['JAX_COMPILATION_CACHE_DIR'])


def pytest_unconfigure(config):
  if _OWN_CACHE and not hasattr(config, 'workerinput'):  # the session's first process only
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
