"""benchmarks/gpu.py, the budgeted runner of the GPU benchmarks: its bookkeeping, with stand-in steps.

The steps are replaced by tiny scripts (one prints JSON after other output, one outlives its time limit, one
fails), so these tests take seconds and need no accelerator; the real steps' smoke run is
``python3 benchmarks/gpu.py --quick`` (BUILD.md).
"""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import gpu  # noqa: E402


def test_last_json_takes_the_last_object_that_starts_a_line():
  text = 'warming up {not json}\n{"a": 1}\nprogress 50%\n{\n "b": {"c": [1, 2]}\n}\ntrailing words\n'
  assert gpu._last_json(text) == {"b": {"c": [1, 2]}}
  assert gpu._last_json('{"a": 1}\n{"broken": \n') == {"a": 1}
  assert gpu._last_json("no object here\n") is None
  assert gpu._last_json("") is None


@pytest.fixture
def standin_steps(tmp_path, monkeypatch):
  scripts = {
      "ok.py": 'print("some log line {x}")\nprint(\'{"figure": 1.5}\')\n',
      "slow.py": 'import time\nprint(\'{"partial": true}\', flush=True)\ntime.sleep(60)\n',
      "fails.py": 'import sys\nsys.stderr.write("broken on purpose")\nsys.exit(3)\n',
  }
  for name, body in scripts.items():
    (tmp_path / name).write_text(textwrap.dedent(body))
  monkeypatch.setattr(gpu, "HERE", str(tmp_path))
  monkeypatch.setattr(gpu, "STEPS", {
      "ok": (["ok.py"], ["ok.py"], 30),
      "slow": (["slow.py"], ["slow.py"], 3),
      "fails": (["fails.py"], ["fails.py"], 30),
      "late": (["ok.py"], ["ok.py"], 30),
  })
  monkeypatch.setattr(gpu, "_device", lambda env: {"stand_in": True})
  return tmp_path


def test_runner_records_each_step_and_keeps_to_its_budget(standin_steps, tmp_path):
  out = tmp_path / "out"
  rc = gpu.main(["--out", str(out), "--budget", "12", "--wheels", str(tmp_path / "none"),
                 "--steps", "ok,fails,slow,late"])
  assert rc == 1  # not every step succeeded
  summary = json.loads((out / "gpu.json").read_text())
  steps = summary["steps"]
  assert list(steps) == ["ok", "fails", "slow", "late"]
  assert steps["ok"]["returncode"] == 0 and steps["ok"]["json"] is True
  assert json.loads((out / "ok.json").read_text()) == {"figure": 1.5}
  assert steps["fails"]["returncode"] == 3 and "broken on purpose" in steps["fails"]["stderr_tail"]
  assert not (out / "fails.json").exists()
  # the slow step is stopped at its own limit (3 s), and what it printed before is kept
  assert steps["slow"]["returncode"] == "timeout" and 2.5 <= steps["slow"]["seconds"] < 8
  assert json.loads((out / "slow.json").read_text()) == {"partial": True}
  # under 10 s of the 12 were left for the last step: skipped, not started
  assert set(steps["late"]) == {"skipped"} and steps["late"]["skipped"].endswith("s of the budget left")
  assert summary["device"] == {"stand_in": True} and summary["budget_seconds"] == 12
  assert summary["seconds"] < 12


@pytest.mark.parametrize("argv, message", [(["--steps", "bogus"], "unknown step"),
                                           (["--budget", "0"], "--budget must be positive")])
def test_runner_rejects_bad_arguments_before_running_anything(argv, message, tmp_path, capsys):
  with pytest.raises(SystemExit):
    gpu.main(["--out", str(tmp_path / "x")] + argv)
  assert message in capsys.readouterr().err
  assert not (tmp_path / "x").exists()
