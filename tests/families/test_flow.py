"""The flow family: the CLI end to end (bits/dim below a uniform model's and falling, sample
grids, gen_jax.sample), and bad config or sample requests naming the field."""
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from gen_jax.config import ConfigError
from gen_jax.families import flow
from gen_jax.sample import SampleRequest
from gen_jax.train import validate
from tests.conftest import checkpoint_tree, run_cli, tiny_config

CONFIG = "configs/flow/digits.py"


def test_trains_below_a_uniform_models_bits_per_dim_and_samples(tmp_path):
  workdir = str(tmp_path / "flow")
  result = run_cli("gen_jax.main", f"--config={CONFIG}:tiny", f"--workdir={workdir}",
                   "--config.mesh.num_devices=1")
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  train = [r for r in records if "train/bits_per_dim" in r]
  assert [r["step"] for r in train] == [1, 5, 10, 15, 20]
  evals = [r for r in records if "eval/bits_per_dim" in r]
  assert [r["step"] for r in evals] == [10, 20]
  uniform = math.log2(17)  # A density uniform over digits' 17 pixel levels: 4.09 bits/dim.
  for r in evals:
    assert np.isfinite(r["eval/bits_per_dim"]) and r["eval/bits_per_dim"] < uniform, r
    # 8x8x1 dims: nats per image = bits/dim x 64 ln 2.
    np.testing.assert_allclose(r["eval/nats_per_image"], r["eval/bits_per_dim"] * 64 * math.log(2),
                               rtol=1e-5)
  # Training improves the likelihood: the held-out bound falls between the evals (the same
  # images and noise each time) and the training loss from the data-initialized start.
  assert evals[1]["eval/bits_per_dim"] < evals[0]["eval/bits_per_dim"] - 0.05, evals
  assert train[-1]["train/bits_per_dim"] < train[0]["train/bits_per_dim"] - 0.3, train
  assert ("params", "steps_0", "actnorm", "log_scale") in checkpoint_tree(workdir, 20)
  # 16 samples: a 4x4 grid of 8x8 digits (1-pixel borders, 4x enlarged).
  grid = np.asarray(Image.open(os.path.join(workdir, "images", "samples_000020.png")))
  assert grid.shape == ((4 * 9 + 1) * 4,) * 2 and grid.std() > 5

  sample = run_cli("gen_jax.sample", f"--workdir={workdir}", "--num_samples=16",
                   "--temperature=0.5")
  assert sample.returncode == 0, sample.stderr[-3000:]
  assert "Wrote 16 samples" in sample.stdout
  grid = np.asarray(Image.open(os.path.join(workdir, "samples.png")))
  assert grid.shape == ((4 * 9 + 1) * 4,) * 2 and grid.std() > 5


BAD = [
    ({"model.levels": 4}, r"model.image_size: 8 must be divisible by 2\*\*model.levels = 16"),
    ({"model.levels": 0}, "model.levels: must be positive, got 0"),
    ({"model.steps_per_level": 0}, "model.steps_per_level: must be positive"),
    ({"model.hidden_channels": -4}, "model.hidden_channels: must be positive"),
    ({"model.max_log_scale": 0.0}, "model.max_log_scale: must be positive"),
    ({"model.image_channels": 2}, "model.image_channels: must be 1 or 3"),
    ({"flow.init_batch_size": -1}, "flow.init_batch_size: must be >= 0"),
    ({"sample.temperature": 0.0}, "sample.temperature: must be positive"),
]


def test_bad_config_and_sample_requests_fail_naming_the_field(tmp_path):
  for overrides, message in BAD:
    with pytest.raises(ConfigError, match=message):
      validate(tiny_config(CONFIG, **overrides))
  config = tiny_config(CONFIG)  # sample() checks the request before it touches the params.
  with pytest.raises(ConfigError, match="--class: this flow is not class-conditional"):
    flow.generate(config, None, str(tmp_path), SampleRequest(class_label=1))
  with pytest.raises(ConfigError, match="--guidance: a flow has no classifier-free guidance"):
    flow.generate(config, None, str(tmp_path), SampleRequest(guidance=2.0))
