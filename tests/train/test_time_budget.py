"""train.time_budget_s ends a run at the first step past its CPU budget (counted from the end of
the first step), evaluated and checkpointed as a last step; a negative budget fails naming the
field."""
import os
import time

import pytest

from gen_jax.config import ConfigError
from gen_jax.train import read_metrics, train_and_evaluate, validate
from tests.conftest import tiny_config


def test_a_cpu_budget_ends_the_run_evaluated_and_checkpointed(tmp_path):
  config = tiny_config("configs/vae/digits.py", **{
      "train.num_steps": 100_000, "train.eval_every": 100_000, "checkpoint.every_steps": 100_000,
      "train.time_budget_s": 2.0, "mesh.num_devices": 1})
  cpu_start = time.process_time()
  metrics = train_and_evaluate(config, str(tmp_path))
  used = time.process_time() - cpu_start
  records = read_metrics(str(tmp_path))
  last_step = records[-1]["step"]
  assert 1 < last_step < 100_000
  assert 2.0 <= used < 60  # The budget, then the last step's evaluation and checkpoint.
  assert "eval/negative_elbo" in metrics
  assert [r["step"] for r in records if "eval/loss" in r] == [last_step]
  assert os.listdir(tmp_path / "checkpoints") == [str(last_step)]
  with pytest.raises(ConfigError, match=r"train.time_budget_s: must be >= 0 \(0: off\), got -1"):
    validate(tiny_config("configs/vae/digits.py", **{"train.time_budget_s": -1.0}))
