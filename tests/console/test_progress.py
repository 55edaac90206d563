"""The console (deepalign/console): stage i of n, elapsed and an ETA from measured stage times,
the train loop's records moving it, warnings as plain lines, the full log in stage log files."""

import io
import logging

import pytest
from absl import flags
from absl import logging as absl_logging

from deepalign.console import Console, format_duration, logs, wants_full_log


@pytest.fixture(autouse=True)
def _info_records():
  """absl's logger at INFO, as `python -m deepalign.main` leaves it after parsing its flags."""
  # Restore the logger's own level, not get_verbosity()'s: an unset level (0, inherit the root's)
  # reads as verbosity -1, and setting -1 back would pin absl at WARNING for every later test in
  # this worker (tests/train/test_checkpointing.py then lost its INFO records).
  absl_logger = logging.getLogger('absl')
  before = absl_logger.level
  absl_logging.set_verbosity(absl_logging.INFO)
  yield
  absl_logger.setLevel(before)


class _Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now


class _Tty(io.StringIO):
  def isatty(self) -> bool:
    return True


# The train loop's own records (deepalign/train/loop.py): the console reads its progress off them.
def _loop_start(step: int, total: int) -> None:
  absl_logging.info('%s at step %d of %d in %s', 'starting', step, total, '/tmp/x')


def _loop_step(step: int, total: int) -> None:
  absl_logging.info('step %d/%d loss=%.4g %.2f steps/s ETA %s', step, total, 0.5, 1.0, '0:00:01')


def test_format_duration():
  assert [format_duration(s) for s in (0, 42.4, 725, 3723)] == ['0:00', '0:42', '12:05', '1:02:03']


def test_stages_eta_from_measured_stage_times_and_the_loop_records():
  clock, stream = _Clock(), io.StringIO()
  console = Console(stream=stream, live=False, clock=clock, print_every_s=30)
  progress = console.progress([('base', 10.0), ('ppo', 20.0), ('report', 30.0)], title='study')
  with progress.stage('base'):
    clock.now = 20.0  # twice the prior: this machine is half as fast as the reference
  assert progress.speed() == 2.0 and progress.eta(clock.now) == 100.0
  with progress.stage('ppo'):
    clock.now = 21.0
    _loop_start(0, 100)
    clock.now = 31.0
    _loop_step(10, 100)   # the first step record: the rate counts from here
    clock.now = 41.0
    _loop_step(60, 100)   # 5 steps/s: 8 s left in this stage, then report's 30 s x 2
    assert progress.eta(clock.now) == pytest.approx(8.0 + 60.0)
    assert progress.line() == ('[2/3] ppo: step 60/100, 5.00 steps/s, ETA 0:08 | study: 0:41 '
                               'elapsed, about 1:08 left')
    clock.now = 49.0
    _loop_step(100, 100)  # the last step is always shown
  progress.skip('report')
  lines = stream.getvalue().splitlines()
  assert lines[0] == '[1/3] base: started'
  assert lines[1] == '[1/3] base: done in 0:20 | study: 0:20 elapsed, about 1:40 left'
  assert lines[2] == '[2/3] ppo: started'
  # step 10 came 10 s after the stage's start line: within print_every_s, not printed; step 60
  # 20 s after: not printed either; step 100 is the last: printed.
  assert lines[3].startswith('[2/3] ppo: step 100/100, ') and 'ETA 0:00' in lines[3]
  assert lines[4].startswith('[2/3] ppo: done in 0:29')
  assert lines[5] == '[3/3] report: already finished'
  assert progress.seconds == {'base': 20.0, 'ppo': 29.0, 'report': 0.0}
  _loop_step(1, 2)  # no stage runs: nothing happens
  assert len(stream.getvalue().splitlines()) == 6


def test_one_stage_prints_nothing_before_its_first_step_and_nothing_on_an_error():
  clock, stream = _Clock(), io.StringIO()
  progress = Console(stream=stream, live=False, clock=clock).progress([('sft', 60.0)])
  with pytest.raises(ValueError):
    with progress.stage('sft'):
      raise ValueError('a bad input')  # main prints it as one 'error: ...' line
  assert stream.getvalue() == ''
  with progress.stage('sft'):
    clock.now = 2.0
    _loop_step(5, 10)
    clock.now = 3.0
    _loop_step(10, 10)
  assert stream.getvalue().splitlines() == ['sft: step 10/10, 5.00 steps/s, ETA 0:00',
                                            'sft: done in 0:03']


def test_live_line_on_a_terminal_and_plain_warning_lines():
  clock, stream, out = _Clock(), _Tty(), io.StringIO()
  console = Console(stream=stream, out=out, clock=clock, tick_s=60)
  assert console.live
  with console.session():
    progress = console.progress([('a', 1.0), ('b', 1.0)])
    with progress.stage('a'):
      _loop_step(1, 4)
      absl_logging.warning('disk %s is nearly full', '/tmp')
    console.print('the summary')
  text = stream.getvalue()
  assert '\r\x1b[K[1/2] a: step 1/4' in text
  assert '\r\x1b[Kwarning: disk /tmp is nearly full\n' in text
  assert out.getvalue() == 'the summary\n'
  assert absl_logging.get_absl_handler().level < logging.WARNING  # restored after the session


def test_the_full_log_goes_to_the_stage_file_once_its_directory_exists(tmp_path, capsys):
  clock = _Clock()
  progress = Console(stream=io.StringIO(), live=False, clock=clock).progress([('run', 1.0)])
  run_dir = tmp_path / 'run'
  with progress.stage('run', log_path=str(run_dir / 'log.txt')):
    absl_logging.info('before the run starts')
    logging.getLogger('jax._src.xla_bridge').info(
        "Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so")
    assert not run_dir.exists()  # a log never creates the workdir
    run_dir.mkdir()
    _loop_step(3, 4)
  text = (run_dir / 'log.txt').read_text()
  assert 'before the run starts' in text and 'step 3/4 loss=0.5' in text
  assert 'Unable to initialize backend' not in text
  assert text.splitlines()[0].startswith('I')  # absl's format: I<date> <time> ... file.py:N]
  with logs.log_file(str(tmp_path / 'never' / 'log.txt')):
    absl_logging.info('dropped')
  assert not (tmp_path / 'never').exists()


def test_naming_an_absl_logging_flag_asks_for_the_full_log():
  values = flags.FlagValues()
  flags.DEFINE_integer('verbosity', -1, '', short_name='v', flag_values=values)
  flags.DEFINE_boolean('alsologtostderr', False, '', flag_values=values)
  values(['prog'])
  assert not wants_full_log(values)
  values(['prog', '-v', '0'])
  assert wants_full_log(values)
  assert not Console(stream=_Tty(), full_log=True).live  # log lines would tear a live line


def test_compiling_before_the_first_step_does_not_count_in_the_rate():
  """The toy study's PPO printed '0.15 steps/s, ETA 35:05' at its first record (step 5, after a
  30 s compile) and then ran 10 steps/s: the rate counts from the first step record only."""
  clock, stream = _Clock(), io.StringIO()
  progress = Console(stream=stream, live=False, clock=clock).progress(
      [('ppo', 60.0), ('report', 10.0)])
  with progress.stage('ppo'):
    _loop_start(0, 320)
    clock.now = 34.0
    _loop_step(5, 320)    # one record: no rate yet; the prior says 26 s are left
    assert 'steps/s' not in progress.line() and 'ETA 0:26' in progress.line()
    clock.now = 64.0
    _loop_step(305, 320)  # 10 steps/s since the first record
    assert '10.00 steps/s, ETA 0:02' in progress.line()
