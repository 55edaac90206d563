"""What a person sees while a long command runs: one progress display (stage i of n, elapsed,
an ETA from measured stage times), warnings as plain lines, and the full absl log in each
stage's own log file (`--verbosity` / absl's logging flags put it back on stderr).

  progress.py   Progress: the display, its ETA and the stage contexts
  logs.py       where log records go: stderr only when asked, every stage's log file always
"""

from deepalign.console.logs import wants_full_log
from deepalign.console.progress import Console, Progress, format_duration

__all__ = ['Console', 'Progress', 'format_duration', 'wants_full_log']
