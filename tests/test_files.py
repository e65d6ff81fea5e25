"""scl.files: atomic writes leave the old file or the new one, never a part; saved figures are closed."""

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from scl import files  # noqa: E402


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "table.csv"
  path.write_text("old\n")
  with pytest.raises(RuntimeError, match="stopped"):
    with files.atomic_open(str(path)) as f:
      f.write("half a new")
      raise RuntimeError("stopped")
  assert path.read_text() == "old\n"
  assert os.listdir(tmp_path) == ["table.csv"]


def test_json_writes_infinities_as_strings_and_nan_as_null(tmp_path):
  path = tmp_path / "m.json"
  files.write_json(str(path), {"lam": np.float32(np.inf), "x": np.array([1.0, np.nan, -np.inf])})
  assert json.loads(path.read_text()) == {"lam": "inf", "x": [1.0, None, "-inf"]}
  assert float(json.loads(path.read_text())["lam"]) == np.inf


def test_save_figure_writes_a_png_and_closes_the_figure(tmp_path):
  fig, ax = plt.subplots()
  ax.plot([0, 1], [1, 0])
  files.save_figure(str(tmp_path / "a.png"), fig)
  assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not plt.fignum_exists(fig.number)  # else a binary saving many figures keeps them all open
  kept, _ = plt.subplots()
  files.save_figure(str(tmp_path / "b.png"), kept, close=False)
  assert plt.fignum_exists(kept.number)
  plt.close(kept)


def test_save_figure_closes_the_figure_when_saving_fails(tmp_path):
  fig, _ = plt.subplots()
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(OSError):
    files.save_figure(str(blocker / "a.png"), fig)  # a directory that is a file
  assert not plt.fignum_exists(fig.number)
