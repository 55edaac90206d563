"""Fault injection for the crash tests: SIGKILL this process at a named point of the loop.

    DEEPALIGN_KILL_AT=after_save:8        # kill right after step 8's save was started (async)
    DEEPALIGN_KILL_AT=after_step:5:30     # kill 30 ms after step 5 was dispatched (mid-step)

Unset (always, outside tests) it costs one dict lookup per call. Sites: `after_step`,
`after_log`, `before_save`, `after_save`, `after_wait`, `before_finish`, `after_finish`.
"""

import os
import signal
import threading

_ENV = 'DEEPALIGN_KILL_AT'


def _kill() -> None:
  os.kill(os.getpid(), signal.SIGKILL)


def kill_point(site: str, step: int) -> None:
  """SIGKILLs the process (now, or after the given milliseconds) if DEEPALIGN_KILL_AT names
  this site and step."""
  spec = os.environ.get(_ENV)
  if not spec:
    return
  parts = spec.split(':')
  if parts[0] != site or int(parts[1]) != step:
    return
  delay_ms = int(parts[2]) if len(parts) > 2 else 0
  if delay_ms <= 0:
    _kill()
  timer = threading.Timer(delay_ms / 1000, _kill)
  timer.daemon = True
  timer.start()
