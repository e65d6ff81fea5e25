"""scl.plotting.mode_proportions marks the rewarded modes: one set for all panels, or each panel's own."""

import types

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scl import plotting  # noqa: E402


def _result(props):
  return types.SimpleNamespace(metrics={"mode_props": np.asarray(props)})


def test_mode_proportions_marks_one_set_or_each_panels_own():
  props = np.full((3, 4), 0.25)
  results = {"a": _result(props), "b": _result(props)}
  fig = plotting.mode_proportions(results, [1])
  legend = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
  assert legend == ["mode 0", "mode 1 (r≈0)", "mode 2", "mode 3"]
  plt.close(fig)
  fig = plotting.mode_proportions(results, {"a": [0], "b": [2, 3]})
  assert [ax.get_title() for ax in fig.axes[:2]] == ["a\nr≈0 on modes 0", "b\nr≈0 on modes 2, 3"]
  assert "(r≈0)" not in " ".join(t.get_text() for t in fig.axes[-1].get_legend().get_texts())
  plt.close(fig)
