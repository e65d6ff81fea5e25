"""examples/quickstart.ipynb runs top to bottom without error, offline, and draws its figures.

The notebook is executed with nbclient in a kernel of this interpreter (a kernel spec written into a temporary
``JUPYTER_PATH``, so nothing has to be registered in the environment), with ``SCL_SOURCE`` pointing at this
checkout: its install cell then uses the scl already importable from here instead of installing from GitHub,
so no network is needed. It takes about two minutes on 2 CPU cores (mostly compilation).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
KERNEL = "scl-notebook-test"


def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == "code"]


def test_committed_notebook_is_stripped_and_installs_from_a_marked_source():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  for cell in _code_cells(nb):
    assert cell.outputs == [] and cell.execution_count is None, "commit the notebook with outputs stripped"
  install = _code_cells(nb)[0].source
  assert 'SCL_SOURCE = os.environ.get("SCL_SOURCE", "git+https://github.com/scl-dev/scl")' in install
  assert '%pip install -q "scl @ {SCL_SOURCE}"' in install
  assert "colab.research.google.com/github/scl-dev/scl/blob/main/examples/quickstart.ipynb" in nb.cells[0].source


@pytest.fixture
def kernel(tmp_path, monkeypatch):
  """A kernel spec named KERNEL that runs ipykernel in this interpreter, found through JUPYTER_PATH."""
  spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
  spec_dir.mkdir(parents=True)
  spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
          "display_name": "scl test kernel", "language": "python"}
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(
      [str(tmp_path / "jupyter")] + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]))
  monkeypatch.setenv("SCL_SOURCE", str(ROOT))       # the install cell uses this checkout: no network
  monkeypatch.delenv("MPLBACKEND", raising=False)   # the notebook chooses the inline backend itself
  return KERNEL


def test_quickstart_notebook_runs_and_draws_its_figures(kernel):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=600, startup_timeout=120,
                                   resources={"metadata": {"path": str(NOTEBOOK.parent)}})
  client.execute()   # raises CellExecutionError, naming the cell, if any cell fails

  cells = _code_cells(nb)
  for i, cell in enumerate(cells):
    assert cell.execution_count is not None, f"code cell {i} did not run"
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert not errors, f"code cell {i} raised {errors[0].ename}: {errors[0].evalue}"

  text = "\n".join(o.get("text", "") for c in cells for o in c.outputs if o.output_type == "stream")
  assert f"scl from {ROOT / 'scl' / '__init__.py'}" in text, "the notebook did not use this checkout's scl"

  figure_cells = [c for c in cells if "plt.show()" in c.source]
  assert len(figure_cells) == 5   # curated loop, exact engine, attacks, sweep, digits
  for cell in figure_cells:
    images = [o for o in cell.outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert images, f"no inline figure from the cell starting {cell.source.splitlines()[0]!r}"

  # The exact engine's monitors: the bounds hold at every step, as the text says.
  assert "K = 2: Lemma 2.2 holds at every step: True" in text
  assert "K = 4: Lemma 2.2 holds at every step: True" in text
  assert "K = 4, λ = 0.25: Theorem 2.4 holds at every step: True" in text
  assert "synthetic  class-0 share" in text and "real 1:1   class-0 share" in text
