"""Every GPU figure of the README's Performance section in one call, with a time budget; writes JSON files.

For a machine with an accelerator that is lent for minutes (BUILD.md, "GPU / TPU"): one command runs the
benchmarks that the README's GPU figures come from, most wanted first, each in its own process with a time
limit taken from what is left of ``--budget``, and writes what each printed as soon as it finishes, so a call
that is cut short still returns every step that finished:

  1. ``families``    ``benchmarks/loop.py`` (b): seconds per loop iteration at the papers' scale for each model
                     family (categorical, Gaussian mixture, flow);
  2. ``sweep``       ``benchmarks/sweep.py --skip_devices``: the 64-point grid in one ``scl.sweep`` call (one
                     ``vmap`` over the whole grid on an accelerator) against 64 sequential ``scl.run`` calls;
  3. ``attack``      ``benchmarks/attack.py --one 50000 64``: the gradient attack at 50,000 pairs (2 -> 64 -> 1);
  4. ``images``      ``benchmarks/images.py --gpu --skip_digits --repeats 1``: the image loop at CIFAR-10's shape
                     and the papers' scale (a synthetic stand-in of CIFAR-10's shape where it is not prepared);
  5. ``equal_work``  ``benchmarks/loop.py`` (a): the flow's equal-work fit and 50,000-sample draw against the
                     device's own matrix-product peak;
  6. ``adversarial`` ``benchmarks/loop.py`` (c): the adversarial loop (50,000 samples, 50,000 pairs, gradient attack).

``OUT/<step>.json`` is each step's JSON; ``OUT/gpu.json`` says what ran where (the device's kind, the driver as
``nvidia-smi`` reports it, jax's version, the matrix-product precision) and, per step, the seconds, the exit
status and the end of its standard error. It is rewritten after every step (atomically). Seven files in all.

The package needs only what ``import scl`` imports; where the machine's Python lacks one (an image with jax,
flax, optax and chex but not jaxopt, say), put wheels in ``.whl/`` (``make gpu-wheels``): they are installed
into a temporary folder first (``--wheels``). scl itself is used from this checkout (``PYTHONPATH``), not
installed.

    python3 benchmarks/gpu.py --out OUT [--budget 540] [--steps families,sweep,attack] [--quick]

``--quick`` runs every step at its smallest size (``--quick``; the attack at 1,000 pairs; the images without
``--gpu``): a smoke run of the runner itself, on any machine, in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import _machine  # noqa: E402

#: step -> (script and arguments, the same with ``--quick``, the most seconds it may take of the budget).
STEPS = {
    "families": (["loop.py", "--skip_equal_work", "--skip_adversarial"],
                 ["loop.py", "--skip_equal_work", "--skip_adversarial", "--quick"], 150),
    "sweep": (["sweep.py", "--skip_devices"], ["sweep.py", "--skip_devices", "--quick"], 150),
    "attack": (["attack.py", "--one", "50000", "64"], ["attack.py", "--one", "1000", "64"], 60),
    "images": (["images.py", "--gpu", "--skip_digits", "--repeats", "1"],
               ["images.py", "--quick", "--skip_digits"], 200),
    "equal_work": (["loop.py", "--skip_loop", "--skip_adversarial"],
                   ["loop.py", "--skip_loop", "--skip_adversarial", "--quick"], 90),
    "adversarial": (["loop.py", "--skip_equal_work", "--skip_loop"],
                    ["loop.py", "--skip_equal_work", "--skip_loop", "--quick"], 120),
}


def _load_files_module():
  """``scl/files.py`` (atomic result files), loaded by its path: ``import scl.files`` would import the package,
  hence jax and jaxopt, which this process must not need (jaxopt may come only with the wheels, for the
  steps). The module itself imports only the standard library and numpy."""
  spec = importlib.util.spec_from_file_location("_scl_files", os.path.join(ROOT, "scl", "files.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_write_json = _load_files_module().write_json


def _install_wheels(folder: str) -> str | None:
  """Install the wheels in ``folder`` into a temporary target folder (no index, no dependencies); returns it."""
  wheels = sorted(os.path.join(folder, w) for w in os.listdir(folder) if w.endswith(".whl"))
  if not wheels:
    return None
  target = tempfile.mkdtemp(prefix="scl-wheels-")
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                  "--no-cache-dir", "--target", target] + wheels, check=True)
  return target


def _last_json(text: str):
  """The last JSON object in ``text`` that starts a line (a step prints one, indented or on one line, after
  whatever else it printed), or None."""
  decoder = json.JSONDecoder()
  starts = [i for i in range(len(text)) if text[i] == "{" and (i == 0 or text[i - 1] == "\n")]
  for i in reversed(starts):
    try:
      return decoder.raw_decode(text, i)[0]
    except json.JSONDecodeError:
      continue
  return None


def _device(env: dict) -> dict:
  """The accelerator as JAX and ``nvidia-smi`` see it (in a child process, so this one never imports jax)."""
  probe = ("import json, jax; d = jax.devices()[0]; print(json.dumps(dict(backend=jax.default_backend(), "
           "device_kind=d.device_kind, device_count=jax.device_count(), jax_version=jax.__version__, "
           "default_matmul_precision=str(jax.config.jax_default_matmul_precision))))")
  out = {}
  try:
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    out = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else dict(
        error=proc.stderr[-2000:])
  except (subprocess.TimeoutExpired, IndexError, json.JSONDecodeError) as e:
    out = dict(error=f"{type(e).__name__}: {e}")
  try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30)
    out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
  except (OSError, subprocess.TimeoutExpired):
    out["nvidia_smi"] = None
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=os.environ.get("OUT", "runs/gpu"), help="folder for the JSON files")
  parser.add_argument("--budget", type=float, default=540.0, help="seconds for all steps together")
  parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, from {','.join(STEPS)}")
  parser.add_argument("--quick", action="store_true", help="smoke run: every step at its smallest size")
  parser.add_argument("--wheels", default=os.path.join(ROOT, ".whl"), help="folder of wheels to install first")
  args = parser.parse_args(argv)
  steps = [s for s in args.steps.split(",") if s]
  unknown = [s for s in steps if s not in STEPS]
  if unknown:
    parser.error(f"unknown step(s) {unknown}: choose from {list(STEPS)}")
  if args.budget <= 0:
    parser.error(f"--budget must be positive, got {args.budget}")
  start = time.monotonic()
  os.makedirs(args.out, exist_ok=True)

  env = dict(os.environ, PYTHONUNBUFFERED="1")
  paths = [ROOT]
  if os.path.isdir(args.wheels):
    target = _install_wheels(args.wheels)
    if target:
      paths.append(target)
  env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))

  summary = dict(benchmark="gpu", machine=_machine.machine(), device=_device(env), quick=args.quick,
                 budget_seconds=args.budget, steps={})
  summary_path = os.path.join(args.out, "gpu.json")
  _write_json(summary_path, summary)
  for name in steps:
    full, quick, cap = STEPS[name]
    script = quick if args.quick else full
    left = args.budget - (time.monotonic() - start)
    limit = min(cap, left)
    if left < min(cap, 10):  # under 10 s left (or under the step's own cap, if smaller): not started
      summary["steps"][name] = dict(skipped=f"{max(left, 0):.0f} s of the budget left")
      _write_json(summary_path, summary)
      continue
    cmd = [sys.executable, os.path.join(HERE, script[0])] + script[1:]
    t0 = time.monotonic()
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=limit)
      rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
      rc = "timeout"
      stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
      stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    seconds = time.monotonic() - t0
    result = _last_json(stdout)
    if result is not None:
      _write_json(os.path.join(args.out, f"{name}.json"), result)
    summary["steps"][name] = dict(
        command=" ".join(["benchmarks/" + script[0]] + script[1:]), seconds=round(seconds, 1),
        time_limit=round(limit), returncode=rc, json=result is not None, stderr_tail=stderr[-1500:])
    _write_json(summary_path, summary)
    print(f"{name}: rc={rc} in {seconds:.0f} s (limit {limit:.0f} s)", flush=True)
  summary["seconds"] = round(time.monotonic() - start, 1)
  _write_json(summary_path, summary)
  return 0 if all(s.get("returncode") == 0 for s in summary["steps"].values()) else 1


if __name__ == "__main__":
  sys.exit(main())
