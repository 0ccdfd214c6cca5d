"""Two processes of 4 CPU devices each train one model through JAX's distributed runtime, as two
hosts would: each reads its own slice of the data, and a checkpoint written by both is restored by
both and continues exactly."""
import os
import shutil
import socket
import subprocess
import sys

import numpy as np

from gen_jax.train.metrics import read_metrics
from tests.conftest import FAST_COMPILE_XLA_FLAG, REPO_ROOT

ARGS = ["--config=configs/llm/pretrain.py:tiny", "--config.train.num_steps=12",
        "--config.train.log_every=1", "--config.checkpoint.every_steps=6",
        "--config.train.eval_every=6", "--config.logging.progress_bar=False"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_two_hosts(workdir: str) -> list[str]:
  """Runs gen_jax.main as processes 0 and 1 of a 2-host job; returns their outputs."""
  env = {**os.environ,
         "XLA_FLAGS": f"--xla_force_host_platform_device_count=4 {FAST_COMPILE_XLA_FLAG}",
         "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
         "JAX_COORDINATOR_ADDRESS": f"localhost:{_free_port()}", "JAX_NUM_PROCESSES": "2"}
  procs = [subprocess.Popen([sys.executable, "-m", "gen_jax.main", *ARGS, f"--workdir={workdir}"],
                            cwd=REPO_ROOT, env={**env, "JAX_PROCESS_ID": str(i)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


def _losses(workdir: str) -> dict[int, float]:
  return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def test_two_hosts_train_checkpoint_and_resume_exactly(tmp_path):
  workdir = str(tmp_path / "run")
  outputs = _run_two_hosts(workdir)
  assert all("Final metrics" in out for out in outputs)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "6"]
  straight = _losses(workdir)
  assert sorted(straight) == list(range(1, 13)) and np.isfinite(list(straight.values())).all()

  # Lose the last checkpoint: both hosts restore step 6 and must retrace the same 6 steps.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "12"))
  outputs = _run_two_hosts(workdir)
  assert all(f"Resumed from {workdir}/checkpoints/6" in out for out in outputs)
  resumed = _losses(workdir)
  np.testing.assert_allclose([resumed[s] for s in range(7, 13)], [straight[s] for s in range(7, 13)],
                             rtol=1e-6)
