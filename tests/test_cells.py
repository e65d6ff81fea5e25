"""experiments/_cells.py: a stopped attack-binary run loses no finished cell, and a rerun loads exactly the
cells whose configuration and seeds are unchanged; the loaded results equal a fresh ``scl.sweep``."""

import dataclasses

import numpy as np
import pytest

import scl

import _binaries

cells = _binaries.load("cells_module", "experiments", "_cells.py")

SMALL = dict(model="categorical", iterations=1, pool_size=400, n_keep=200, n_real=400, n_eval=400)


def _todo(lam_b=1.0):
  return {("synthetic", "none"): scl.configs.gaussian8(lam=float("inf"), **SMALL),
          ("real 1:1", "none"): scl.configs.gaussian8(lam=lam_b, **SMALL)}


class _Counting:
  """``scl.sweep`` that counts its calls and raises KeyboardInterrupt on call ``stop_at`` (1-based)."""

  def __init__(self, stop_at=None):
    self.calls, self.stop_at, self.real = 0, stop_at, scl.sweep

  def __call__(self, cfg, **kwargs):
    self.calls += 1
    if self.calls == self.stop_at:
      raise KeyboardInterrupt
    return self.real(cfg, **kwargs)


def _assert_same(a, b):
  assert list(a.axes) == list(b.axes) and sorted(a.metrics) == sorted(b.metrics)
  for name in a.axes:
    np.testing.assert_array_equal(a.axes[name], b.axes[name])
  for name in a.metrics:
    np.testing.assert_array_equal(a.metrics[name], b.metrics[name])


def test_a_stopped_run_resumes_with_its_finished_cells(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  stopping = _Counting(stop_at=2)
  monkeypatch.setattr(scl, "sweep", stopping)
  with pytest.raises(KeyboardInterrupt):
    cells.run_cells(_todo(), 2, "test", workdir)
  assert (tmp_path / "cells" / "synthetic__none.npz").exists()
  assert not (tmp_path / "cells" / "real_1_1__none.npz").exists()
  assert [p.name for p in (tmp_path / "cells").iterdir()] == ["synthetic__none.npz"]   # no temporary left

  counting = _Counting()
  monkeypatch.setattr(scl, "sweep", counting)
  results, seconds = cells.run_cells(_todo(), 2, "test", workdir)
  assert counting.calls == 1                      # only the unfinished cell ran
  assert all(s > 0 for s in seconds.values())
  fresh = {cell: counting.real(cfg, seeds=2) for cell, cfg in _todo().items()}   # independent runs
  for cell in fresh:
    _assert_same(results[cell], fresh[cell])
    assert results[cell].config == _todo()[cell]
  assert results[("synthetic", "none")].info["loaded_from"].endswith("synthetic__none.npz")
  # The binaries' tables from a loaded cell are those of a fresh one.
  assert results[("synthetic", "none")].to_frame().equals(fresh[("synthetic", "none")].to_frame())

  counting.calls = 0
  cells.run_cells(_todo(), 2, "test", workdir)
  assert counting.calls == 0                      # everything finished: nothing runs
  cells.run_cells(_todo(lam_b=4.0), 2, "test", workdir)
  assert counting.calls == 1                      # one cell's configuration changed
  cells.run_cells(_todo(lam_b=4.0), 3, "test", workdir)
  assert counting.calls == 3                      # other seeds: every cell runs again


def test_fingerprint_sees_every_field_and_the_whole_of_an_array():
  cfg = scl.configs.gaussian8(**SMALL)
  assert cells.fingerprint(cfg, 2) == cells.fingerprint(scl.configs.gaussian8(**SMALL), 2)
  assert cells.fingerprint(cfg, 2) != cells.fingerprint(cfg, 3)
  assert cells.fingerprint(cfg, 2) != cells.fingerprint(cfg.replace(K=3), 2)
  points = np.zeros((5000, 2), np.float32)
  moved = points.copy()
  moved[2500, 1] = 1e-3      # the middle of an array that numpy's repr elides
  assert repr(points) == repr(moved)
  with_points = lambda p: dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, points=p))
  assert cells.fingerprint(with_points(points), 2) != cells.fingerprint(with_points(moved), 2)
