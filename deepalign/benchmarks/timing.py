"""Wall-clock timing of jitted calls the way W_TINY.md prescribes: warm-ups, then a median.

Every call is followed by `jax.block_until_ready`, so the time covers the work and not only its
asynchronous dispatch. The first call's time is kept apart: for JAX it is mostly compilation.
The process's CPU time per call is kept too: on a machine shared with other jobs the wall
time grows with the load, while the CPU time (summed over XLA's threads) mostly does not.
"""

import dataclasses
import os
import resource
import statistics
import time
from typing import Any, Callable

import jax


@dataclasses.dataclass(frozen=True)
class Timings:
  """Wall seconds of each timed call (after the warm-ups), their CPU seconds, and the wall
  seconds of the very first call."""
  times: tuple[float, ...]
  cpu_times: tuple[float, ...]
  first_call_s: float

  @property
  def median(self) -> float:
    return statistics.median(self.times)

  def summary(self, prefix: str) -> dict[str, float]:
    """{prefix}_median_s / _min_s / _max_s, for the JSON line."""
    return {f'{prefix}_median_s': self.median, f'{prefix}_min_s': min(self.times),
            f'{prefix}_max_s': max(self.times),
            f'{prefix}_cpu_median_s': statistics.median(self.cpu_times)}


def time_calls(call: Callable[[int], Any], iters: int, warmup: int) -> Timings:
  """Runs `call(i)` for i = 0 .. warmup + iters - 1 and times the last `iters` calls.

  `call(i)` must return the jax values to wait for; i lets a caller vary keys or carry state.
  """
  if iters < 1 or warmup < 0:
    raise ValueError(f'iters={iters} must be >= 1 and warmup={warmup} >= 0')
  first_call_s = 0.0
  times, cpu_times = [], []
  for i in range(warmup + iters):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(call(i))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if i == 0:
      first_call_s = elapsed
    if i >= warmup:
      times.append(elapsed)
      cpu_times.append(cpu)
  return Timings(times=tuple(times), cpu_times=tuple(cpu_times), first_call_s=first_call_s)


def time_state_steps(step: Callable[..., tuple[Any, Any]], state: Any, args: tuple,
                     iters: int, warmup: int) -> tuple[Timings, Any, Any]:
  """Times `state, metrics = step(state, *args)`, each call taking the state the last one
  returned (the train steps donate it); returns the Timings, the last state and its metrics."""
  holder = {'state': state, 'metrics': None}

  def call(i: int):
    del i  # the steps fold their own step counter into their keys
    holder['state'], holder['metrics'] = step(holder['state'], *args)
    return holder['state'], holder['metrics']

  return time_calls(call, iters, warmup), holder['state'], holder['metrics']


def peak_rss_mb() -> float:
  """Peak resident set size of this process (ru_maxrss is in KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def environment() -> dict[str, Any]:
  """What a reader needs to compare two figures: versions, backend, cores and machine load."""
  load1, load5, _ = os.getloadavg()
  return {'framework': 'deepalign (jax)', 'jax_version': jax.__version__,
          'backend': jax.default_backend(), 'device': str(jax.devices()[0].device_kind),
          'cpu_count': os.cpu_count(), 'load_avg_1m': round(load1, 2),
          'load_avg_5m': round(load5, 2)}
