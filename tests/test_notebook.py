"""The Colab quick-start notebook, executed cell by cell in a real Jupyter kernel on the tiny preset."""
import json
import os
import re
import sys

import nbclient
import nbformat
import pytest

from tests.conftest import FAST_COMPILE_XLA_FLAG, REPO_ROOT

NOTEBOOK = REPO_ROOT / "experiments" / "quickstart.ipynb"
KERNEL_NAME = "gen_jax_test_python"  # A kernelspec of our own, so no other python3 spec can win.
CELL_TIMEOUT_S = 300


def _set_parameters(nb, **values) -> None:
  """Rewrites `NAME = ...` lines of the cell tagged "parameters", the way papermill would."""
  [cell] = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  for name, value in values.items():
    cell.source, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", cell.source,
                                 flags=re.MULTILINE)
    assert count == 1, f"the parameters cell has no single `{name} = ...` line:\n{cell.source}"


def _kernel_env(tmp_path, monkeypatch) -> dict[str, str]:
  """A kernelspec that runs this very interpreter, and the environment the kernel starts with."""
  spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
  spec_dir.mkdir(parents=True)
  spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
          "display_name": "gen_jax test", "language": "python"}
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter_runtime"))
  from jupyter_client.kernelspec import KernelSpecManager
  assert KernelSpecManager().get_kernel_spec(KERNEL_NAME).argv[0] == sys.executable

  env = dict(os.environ)
  # conftest.py fakes 8 CPU devices for this process; the notebook runs as a user would, on 1
  # device (with the tests' fast-compile flag).
  env["XLA_FLAGS"] = FAST_COMPILE_XLA_FLAG
  env["JAX_PLATFORMS"] = "cpu"
  env["IPYTHONDIR"] = str(tmp_path / "ipython")  # No profile or history in the home folder.
  env.pop("MPLBACKEND", None)
  return env


def _stdout(cell) -> str:
  return "".join(o.get("text", "") for o in cell.outputs
                 if o.output_type == "stream" and o.name == "stdout")


def test_committed_notebook_is_valid_and_has_no_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == "python3"
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.outputs == [] and c.execution_count is None for c in code)
  assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


def test_quickstart_notebook_trains_plots_and_samples(tmp_path, monkeypatch):
  workdir = tmp_path / "workdir"
  nb = nbformat.read(NOTEBOOK, as_version=4)
  _set_parameters(nb, PRESET="tiny", WORKDIR=str(workdir))
  run_dir = tmp_path / "cwd"  # The notebook must not depend on starting in the repo.
  run_dir.mkdir()
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME,
                                   resources={"metadata": {"path": str(run_dir)}})
  client.execute(env=_kernel_env(tmp_path, monkeypatch))  # Raises CellExecutionError on any error.

  cells = {c.id: c for c in nb.cells}
  # The kernel ran this interpreter and the install cell found this checkout instead of cloning.
  install_out = _stdout(cells["install"])
  assert f"gen_jax from {REPO_ROOT / 'gen_jax'}\n" in install_out
  assert f"Python {sys.executable}\n" in install_out
  assert not (run_dir / "gen_jax").exists()
  assert "JAX devices: [CpuDevice(id=0)]" in _stdout(cells["train"])

  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if "train/loss" in r]
  evals = [r for r in records if "eval/loss" in r]
  assert [r["step"] for r in evals] == [10, 20]  # The tiny preset: 20 steps, eval every 10.
  assert evals[-1]["eval/loss"] < train[0]["train/loss"] - 0.5  # It learned.
  assert (workdir / "checkpoints" / "20").is_dir()
  assert (workdir / "tokenizer.json").is_file()

  loss_outputs = cells["loss"].outputs
  if any("image/png" in o.get("data", {}) for o in loss_outputs):
    pass  # matplotlib is installed: the cell drew the curves.
  else:  # The text-table fallback: one row per logged step with its losses.
    table = _stdout(cells["loss"]).splitlines()
    assert table[0].split() == ["step", "train/loss", "eval/loss"]
    last = table[-1].split()
    assert int(last[0]) == 20
    assert float(last[2]) == pytest.approx(evals[-1]["eval/loss"], abs=1e-4)

  # sample() prints the prompt and its continuation. After 20 steps greedy decoding may well repeat
  # newlines, so only the sampled continuation must hold visible text.
  prompt = "The for statement"
  greedy, hot = _stdout(cells["sample-greedy"]), _stdout(cells["sample-hot"])
  assert greedy.startswith(prompt) and len(greedy) > len(prompt + "\n"), repr(greedy)
  assert hot.startswith(prompt) and hot[len(prompt):].strip(), repr(hot)
