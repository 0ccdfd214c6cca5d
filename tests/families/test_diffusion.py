"""The diffusion family end to end through the CLI, and its config errors naming their fields."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from gen_jax.config import ConfigError
from gen_jax.families import diffusion
from gen_jax.sample import SampleRequest
from gen_jax.train import validate
from tests.conftest import run_cli, tiny_config

CONFIG = "configs/diffusion/digits.py"


def _grid_shape(rows: int, cols: int, size: int = 8, scale: int = 4) -> tuple[int, int]:
  """A save_image_grid PNG's (height, width): one pixel of padding around every image."""
  return ((rows * (size + 1) + 1) * scale, (cols * (size + 1) + 1) * scale)


def test_tiny_trains_writes_class_rows_and_samples_a_guided_class(tmp_path):
  workdir = str(tmp_path / "diffusion")
  # One device: over the 8 fake ones each step of the U-Net takes 10x longer (the data-parallel
  # path is the loop's, tested with the other families).
  result = run_cli("gen_jax.main", f"--config={CONFIG}:tiny", f"--workdir={workdir}",
                   "--config.mesh.num_devices=1")
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    evals = [r for r in map(json.loads, f) if "eval/loss" in r]
  assert [r["step"] for r in evals] == [10, 20]
  last = evals[-1]
  # The output conv starts at zero: predicting eps = 0 scores E[eps^2] = 1. Training beats it.
  assert 0 < last["eval/loss"] < 0.9, last
  # The epsilon objective's loss is the implied noise's MSE.
  np.testing.assert_allclose(last["eval/mse_epsilon"], last["eval/loss"], rtol=1e-5)
  assert 0 < last["eval/mse_x0"] < 4 and last["eval/mse_v"] > 0  # Clipped x0: at most (2)^2.
  assert sorted(os.listdir(os.path.join(workdir, "images"))) == ["samples_000010.png",
                                                                  "samples_000020.png"]
  grid = np.asarray(Image.open(os.path.join(workdir, "images", "samples_000020.png")))
  # sample.num_images=16 over 10 classes: 2 per class, one row per class.
  assert grid.shape == _grid_shape(rows=10, cols=2) and grid.std() > 5, grid.shape

  sample = run_cli("gen_jax.sample", f"--workdir={workdir}", "--num_samples=16", "--class=3",
                   "--guidance=2")
  assert sample.returncode == 0, sample.stderr[-3000:]
  assert "Wrote 16 samples of class 3" in sample.stdout
  png = np.asarray(Image.open(os.path.join(workdir, "samples.png")))
  assert png.shape == _grid_shape(rows=4, cols=4) and png.std() > 5


BAD = [
    ({"diffusion.schedule": "quadratic"}, "diffusion.schedule: 'quadratic' is not one of"),
    ({"diffusion.objective": "score"}, "diffusion.objective: 'score' is not one of"),
    ({"diffusion.condition_dropout": 1.0}, r"diffusion.condition_dropout: must be in \[0, 1\)"),
    ({"sample.sampler": "euler"}, "sample.sampler: 'euler' is not one of"),
    ({"sample.num_steps": 101}, r"sample.num_steps: must be in \[1, diffusion.num_timesteps=100\]"),
    ({"sample.sampler": "dpm_solver", "sample.eta": 1.0}, "sample.eta: only the ddim sampler"),
    ({"model.num_classes": 0}, r"sample.guidance_scale: guidance \(2.0\) needs a conditioned"),
    ({"diffusion.condition_dropout": 0.0}, "diffusion.condition_dropout: guidance"),
    ({"model.context_dim": 16}, "model.context_dim: 16: cross-attention needs text.encoder"),
    ({"sample.clip_denoised": False},
     "diffusion.objective: 'epsilon' with the cosine schedule needs sample.clip_denoised"),
    ({"text.encoder": "workdir:/x", "model.context_dim": 16},
     "model.num_classes: 10: with text.encoder the classes condition through their captions"),
    ({"text.encoder": "workdir:/x", "model.num_classes": 0},
     "model.context_dim: must be text.encoder.s width"),
    ({"model.backbone": "vit"}, r"model.backbone: 'vit' is not one of \('unet', 'dit'\)"),
    ({"model.attention_resolutions": (3,)}, "model.attention_resolutions: 3 is not a resolution"),
    ({"model.backbone": "dit", "model.patch_size": 3}, "model.patch_size"),
]


def test_bad_configs_and_sample_requests_name_their_field():
  for overrides, message in BAD:
    with pytest.raises(ConfigError, match=message):
      validate(tiny_config(CONFIG, **overrides))
  # The data's classes are checked at load, before anything compiles.
  with pytest.raises(ConfigError, match=r"model.num_classes: 5 but the data \('digits'\) has 10"):
    diffusion.build_task(tiny_config(CONFIG, **{"model.num_classes": 5}), "/nonexistent")
  # Sample requests are checked before the params are touched.
  config = tiny_config(CONFIG)
  with pytest.raises(ConfigError, match=r"--class: must be in \[0, 10\), got 10"):
    diffusion.generate(config, None, "/nonexistent", SampleRequest(class_label=10))
  unconditional = tiny_config(CONFIG, **{"model.num_classes": 0, "sample.guidance_scale": 1.0})
  with pytest.raises(ConfigError, match="--guidance: guidance .* needs a conditioned model"):
    diffusion.generate(unconditional, None, "/nonexistent", SampleRequest(guidance=3.0))
  with pytest.raises(ConfigError, match="--class: the model is unconditional"):
    diffusion.generate(unconditional, None, "/nonexistent", SampleRequest(class_label=1))
