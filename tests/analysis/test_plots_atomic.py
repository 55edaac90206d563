"""Plot PNGs are written atomically: a kill mid-write leaves the old image, never a truncated one."""

import matplotlib

matplotlib.use('Agg')
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from deepalign.analysis import plots  # noqa: E402
from deepalign.train import atomic_files  # noqa: E402


def _figure(y: float):
  fig, ax = plt.subplots(figsize=(2, 2))
  ax.plot([0, 1], [0, y])
  return fig


def test_a_plot_is_a_whole_png_and_an_interrupted_one_keeps_the_old(tmp_path, monkeypatch) -> None:
  path = tmp_path / 'curve.png'
  plots._save(_figure(1.0), str(path), caption='seed 0')  # pylint: disable=protected-access
  old = path.read_bytes()
  assert old.startswith(b'\x89PNG') and matplotlib.image.imread(path).ndim == 3

  def killed(*_):  # the process dies after the bytes are written, before the rename
    raise KeyboardInterrupt

  monkeypatch.setattr(atomic_files.os, 'replace', killed)
  with pytest.raises(KeyboardInterrupt):
    plots._save(_figure(2.0), str(path))  # pylint: disable=protected-access
  assert path.read_bytes() == old
  assert sorted(p.name for p in tmp_path.iterdir()) == ['curve.png']  # no temporary left
  monkeypatch.undo()

  def broken_render(self, *args, **kwargs):  # dies while rendering: the target is not touched
    raise MemoryError

  monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', broken_render)
  with pytest.raises(MemoryError):
    plots._save(_figure(3.0), str(path))  # pylint: disable=protected-access
  assert path.read_bytes() == old
