"""One progress display for a long command: stage i of n, elapsed, and an ETA.

  console = Console()                       # stderr; a live line on a terminal
  progress = console.progress([('base', 90.0), ('ppo', 240.0)], title='toy study')
  with progress.stage('base', log_path='DIR/base/log.txt'):
    train(...)                              # the train loop's 'step i/n' records move the line

The ETA comes from measured stage times: each stage has a prior (seconds it takes on the
reference machine, 2 CPU cores), and the stages finished so far say how much faster or slower
this machine is (measured / prior); the running stage's own step rate, once it reports steps,
replaces its prior. On a terminal the status is one line rewritten in place (a ticker keeps
its clock moving during compiles); elsewhere (a pipe, CI) it is plain lines: each stage's
start and end, and a step line at most every `print_every_s` seconds plus the last step.
The train loop's progress is read from its log records ('starting at step %d of %d',
'step %d/%d ...', deepalign/train/loop.py), so the loop needs no display of its own.
"""

import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import threading
import time
from typing import Callable, Iterator, Sequence, TextIO

from deepalign.console import logs

_CLEAR = '\r\x1b[K'  # carriage return + erase to the end of the line


def format_duration(seconds: float) -> str:
  """'0:42', '12:05', '1:02:03'."""
  seconds = int(round(max(seconds, 0.0)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}:{minutes:02d}:{secs:02d}' if hours else f'{minutes}:{secs:02d}'


@dataclasses.dataclass
class _Stage:
  name: str
  prior_s: float
  started: float | None = None
  seconds: float | None = None   # measured, once finished
  skipped: bool = False
  step: int | None = None        # the train loop's last reported step, of `total`
  total: int | None = None
  # Where the step rate is measured from: the first 'step' record (compiling is over by then).
  # Not the loop's 'starting at step' record (`anchor`): the time from it to the first step is
  # mostly compiling, and a rate over it made the toy study's PPO read "0.15 steps/s, ETA 35:05"
  # at its first record for a stage that ran 10 steps/s and ended a minute later.
  first: tuple[int, float] | None = None
  anchor: tuple[int, float] | None = None


class Progress:
  """The status of a command made of known stages (see the module docstring)."""

  def __init__(self, stages: Sequence[tuple[str, float]], console: 'Console', title: str = ''):
    names = [name for name, _ in stages]
    if len(set(names)) != len(names):
      raise ValueError(f'stage names must be distinct: {names}')
    self._stages = [_Stage(name, float(prior)) for name, prior in stages]
    self._index = {name: i for i, name in enumerate(names)}
    self._console = console
    self._title = title
    self._clock = console.clock
    self.start = self._clock()
    self._current: _Stage | None = None
    self._last_print = -float('inf')

  # -- what is measured ----------------------------------------------------------------------

  @property
  def seconds(self) -> dict[str, float]:
    """{stage: measured seconds} of the stages finished in this call (0 for a skipped one)."""
    return {s.name: s.seconds for s in self._stages if s.seconds is not None}

  def elapsed(self, now: float | None = None) -> float:
    """Seconds since this progress began."""
    return (self._clock() if now is None else now) - self.start

  def speed(self) -> float:
    """Measured / prior seconds over the stages this call ran: how slow this machine is."""
    done = [s for s in self._stages if s.seconds is not None and not s.skipped and s.prior_s > 0]
    prior = sum(s.prior_s for s in done)
    return sum(s.seconds for s in done) / prior if prior > 0 else 1.0

  def _rate(self, s: _Stage, now: float) -> float | None:
    origin = s.first
    if origin is not None and s.step is not None and s.step > origin[0] and now > origin[1]:
      return (s.step - origin[0]) / (now - origin[1])
    return None  # until a second step record: the stage's prior x the measured speed

  def _stage_left(self, s: _Stage, now: float) -> float:
    rate = self._rate(s, now)
    if rate and s.total is not None:
      return (s.total - s.step) / rate
    return max(s.prior_s * self.speed() - (now - s.started), 0.0)

  def eta(self, now: float | None = None) -> float:
    """Seconds left: the running stage's remainder plus the pending stages' priors x speed."""
    now = self._clock() if now is None else now
    speed = self.speed()
    left = sum(s.prior_s * speed for s in self._stages
               if s.seconds is None and s is not self._current)
    return left + (self._stage_left(self._current, now) if self._current else 0.0)

  # -- what is shown -------------------------------------------------------------------------

  def _head(self, s: _Stage) -> str:
    n = len(self._stages)
    return f'[{self._index[s.name] + 1}/{n}] {s.name}' if n > 1 else s.name

  def _overall(self, now: float) -> str:
    if len(self._stages) < 2:
      return ''
    title = f'{self._title}: ' if self._title else ''
    return (f' | {title}{format_duration(now - self.start)} elapsed, '
            f'about {format_duration(self.eta(now))} left')

  def line(self, now: float | None = None) -> str:
    """The status line of the running stage ('' when none runs)."""
    now = self._clock() if now is None else now
    s = self._current
    if s is None:
      return ''
    if s.step is not None and s.total is not None:
      rate = self._rate(s, now)
      parts = [f'step {s.step}/{s.total}'] + ([f'{rate:.2f} steps/s'] if rate else [])
      parts.append(f'ETA {format_duration(self._stage_left(s, now))}')
    else:
      parts = [format_duration(now - s.started)]
    return f'{self._head(s)}: {", ".join(parts)}{self._overall(now)}'

  def _show(self, force: bool = False) -> None:
    """Live: rewrite the line. Plain: print it when forced or every print_every_s seconds."""
    now = self._clock()
    if self._console.live:
      self._console.live_line(self.line(now))
    elif force or now - self._last_print >= self._console.print_every_s:
      self._last_print = now
      self._console.note(self.line(now))

  # -- events --------------------------------------------------------------------------------

  def skip(self, name: str, why: str = 'already finished') -> None:
    s = self._stages[self._index[name]]
    s.skipped, s.seconds = True, 0.0
    self._console.note(f'{self._head(s)}: {why}')

  def step(self, step: int, total: int) -> None:
    """The running stage is at `step` of `total` (the train loop's log records call this)."""
    s = self._current
    if s is None:
      return
    if s.first is None:
      s.first = (step, self._clock())
    s.step, s.total = step, total
    self._show(force=step == total)

  def start_at(self, step: int, total: int) -> None:
    """The loop starts (or resumes) at `step` of `total`."""
    s = self._current
    if s is not None:
      s.anchor, s.total = (step, self._clock()), total
      if step > 0:  # a person must see that the run did not start over
        self._console.note(f'{self._head(s)}: resuming at step {step} of {total}')

  @contextlib.contextmanager
  def stage(self, name: str, log_path: str | None = None) -> Iterator['Progress']:
    """Runs stage `name`; its log records go to `log_path` (if given) and move the display."""
    s = self._stages[self._index[name]]
    s.started, self._current = self._clock(), s
    if len(self._stages) > 1 and not self._console.live:
      self._console.note(f'{self._head(s)}: started' + (f' (log: {log_path})' if log_path else ''))
    watcher = _LoopWatcher(self)
    root = logging.getLogger()
    with contextlib.ExitStack() as stack:
      if log_path:
        stack.enter_context(logs.log_file(log_path))
      root.addHandler(watcher)
      stack.callback(root.removeHandler, watcher)
      self._console.attach(self)
      stack.callback(self._console.detach, self)
      if self._console.live:
        self._show()
      else:  # plain lines: the first comes with the loop's first step, or at the stage's end
        self._last_print = self._clock()
      ok = False
      try:
        yield self
        ok = True
      finally:
        self._current = None
        if ok:
          s.seconds = self._clock() - s.started
          self._console.note(f'{self._head(s)}: done in {format_duration(s.seconds)}'
                             + self._overall(self._clock()))
        else:
          self._console.live_line('')


class _LoopWatcher(logging.Handler):
  """Turns the train loop's progress records into Progress events."""

  def __init__(self, progress: Progress):
    super().__init__(logging.INFO)
    self._progress = progress

  def emit(self, record: logging.LogRecord) -> None:
    msg, args = str(record.msg), record.args
    if not isinstance(args, tuple):
      return
    try:
      if msg.startswith('step %d/%d') and len(args) >= 2:
        self._progress.step(int(args[0]), int(args[1]))
      elif msg.startswith('%s at step %d of %d') and len(args) >= 3:
        self._progress.start_at(int(args[1]), int(args[2]))
    except (TypeError, ValueError):
      pass  # another record that happens to start alike


class _Warnings(logging.Handler):
  """WARNING and up as one plain line each ('warning: ...'), above the live line."""

  def __init__(self, console: 'Console'):
    super().__init__(logging.WARNING)
    self._console = console
    self.addFilter(logs.DropBackendProbes())
    self.addFilter(logs.DropVariantProbes())

  def emit(self, record: logging.LogRecord) -> None:
    try:
      message = record.getMessage()
    except Exception:  # a record with bad arguments must not stop the run
      message = str(record.msg)
    self._console.note(f'{record.levelname.lower()}: {message}')


class Console:
  """The streams a command talks to people on: `stream` (stderr) for progress and warnings,
  `out` (stdout) for the final summary. `live`: rewrite one status line in place (default:
  when `stream` is a terminal). `enabled=False` prints nothing (library calls, tests)."""

  def __init__(self, stream: TextIO | None = None, out: TextIO | None = None,
               live: bool | None = None, full_log: bool = False, enabled: bool = True,
               clock: Callable[[], float] = time.monotonic, print_every_s: float = 30.0,
               tick_s: float = 1.0):
    self.stream = stream or sys.stderr
    self.out = out or sys.stdout
    if live is None:
      live = (hasattr(self.stream, 'isatty') and self.stream.isatty()
              and os.environ.get('TERM', '') != 'dumb')
    self.full_log = full_log
    self.enabled = enabled
    self.live = bool(live) and enabled and not full_log  # log lines would tear a live line
    self.clock = clock
    self.print_every_s = print_every_s
    self._tick_s = tick_s
    self._lock = threading.RLock()
    self._shown = ''           # the live line now on screen
    self._active: list[Progress] = []
    self._ticker: threading.Thread | None = None
    self._stop = threading.Event()

  @classmethod
  def silent(cls) -> 'Console':
    return cls(enabled=False, live=False)

  def progress(self, stages: Sequence[tuple[str, float]], title: str = '') -> Progress:
    return Progress(stages, self, title)

  # -- output --------------------------------------------------------------------------------

  def _write(self, text: str) -> None:
    try:
      self.stream.write(text)
      self.stream.flush()
    except (OSError, ValueError):
      pass  # a closed pipe must not crash the run

  def live_line(self, text: str) -> None:
    if not (self.enabled and self.live):
      return
    width = shutil.get_terminal_size((120, 20)).columns - 1
    with self._lock:
      self._shown = text[:width]
      self._write(_CLEAR + self._shown)

  def note(self, text: str) -> None:
    """A permanent line on `stream` (the live line is redrawn under it)."""
    if not self.enabled:
      return
    with self._lock:
      self._write((_CLEAR if self.live else '') + text + '\n')
      if self.live and self._shown:
        self._write(self._shown)

  def print(self, text: str) -> None:
    """The command's result (the final summary) on `out`."""
    if not self.enabled:
      return
    with self._lock:
      if self.live and self._shown:
        self._write(_CLEAR)
        self._shown = ''
      self.out.write(text if text.endswith('\n') else text + '\n')
      self.out.flush()

  # -- the running stage ---------------------------------------------------------------------

  def attach(self, progress: Progress) -> None:
    self._active.append(progress)
    if self.live and self._ticker is None:
      self._stop.clear()
      self._ticker = threading.Thread(target=self._tick, daemon=True, name='console-ticker')
      self._ticker.start()

  def detach(self, progress: Progress) -> None:
    if progress in self._active:
      self._active.remove(progress)
    if not self._active and self._ticker is not None:
      self._stop.set()
      self._ticker.join()
      self._ticker = None

  def _tick(self) -> None:
    while not self._stop.wait(self._tick_s):
      with self._lock:
        if self._active:
          self.live_line(self._active[-1].line())

  @contextlib.contextmanager
  def session(self, log_path: str | None = None) -> Iterator['Console']:
    """A command's lifetime: the full log to `log_path`; unless full_log, absl's stderr lines
    replaced by this console (progress, plain warning lines)."""
    root = logging.getLogger()
    with contextlib.ExitStack() as stack:
      if log_path:
        stack.enter_context(logs.log_file(log_path))
      if self.enabled and not self.full_log:
        stack.callback(logs.silence_absl_stderr())
        handler = _Warnings(self)
        root.addHandler(handler)
        stack.callback(root.removeHandler, handler)
      try:
        yield self
      finally:
        if self.live and self._shown:
          self._write(_CLEAR)
          self._shown = ''
