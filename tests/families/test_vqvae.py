"""The vqvae and vq_prior families end to end through the CLI, and their bad configs."""
import math
import os

import numpy as np
import pytest
from PIL import Image

from gen_jax.config import ConfigError, save_workdir_config
from gen_jax.families import vq_prior
from gen_jax.sample import SampleRequest
from gen_jax.train import validate
from gen_jax.train.metrics import read_metrics
from tests.conftest import run_cli, tiny_config

VQVAE = "configs/vqvae/digits.py"
PRIOR = "configs/vqvae/prior_digits.py"


def _latest(workdir: str) -> dict:
  latest = {}
  for record in read_metrics(workdir):
    latest.update(record)
  return latest


def test_vqvae_then_its_prior_train_report_honest_bits_per_dim_and_sample(tmp_path):
  vq_dir, prior_dir = str(tmp_path / "vqvae"), str(tmp_path / "prior")
  result = run_cli("gen_jax.main", f"--config={VQVAE}:tiny", f"--workdir={vq_dir}",
                   "--config.mesh.num_devices=1")
  assert result.returncode == 0, result.stderr[-3000:]
  records = read_metrics(vq_dir)
  # The first step restarts the codes the tiny initial codebook leaves unused.
  assert records[0]["step"] == 1 and records[0]["train/dead_code_restarts"] > 0
  vq = _latest(vq_dir)
  assert vq["train/perplexity"] > 1 and vq["eval/perplexity"] > 1
  assert 2 <= vq["eval/codes_used"] <= 16
  np.testing.assert_allclose(vq["eval/reconstruction_bits_per_dim"],
                             vq["eval/reconstruction"] / (64 * math.log(2)), rtol=1e-6)
  assert os.path.exists(os.path.join(vq_dir, "images", "reconstructions_000030.png"))

  result = run_cli("gen_jax.main", f"--config={PRIOR}:tiny", f"--workdir={prior_dir}",
                   f"--config.prior.vqvae_workdir={vq_dir}", "--config.mesh.num_devices=1")
  assert result.returncode == 0, result.stderr[-3000:]
  prior = _latest(prior_dir)
  assert math.isfinite(prior["eval/bits_per_dim"])
  # bits/dim = (-log p(class, codes) - log p(x | codes)) / (pixels ln 2); the decoder's term is
  # the VQ-VAE's own held-out reconstruction NLL (the same 64 held-out digits).
  np.testing.assert_allclose(prior["eval/reconstruction_nll"], vq["eval/reconstruction"],
                             rtol=1e-4)
  np.testing.assert_allclose(
      prior["eval/bits_per_dim"],
      (prior["eval/loss"] + prior["eval/reconstruction_nll"]) / (64 * math.log(2)), rtol=1e-5)
  np.testing.assert_allclose(prior["eval/loss"], prior["eval/code_nll"] + prior["eval/class_nll"],
                             rtol=1e-5)
  np.testing.assert_allclose(prior["eval/prior_bits_per_code"],
                             prior["eval/code_nll"] / (16 * math.log(2)), rtol=1e-5)
  # Better than a uniform guess over the 16 codes, and the class token's cost is near ln 10.
  assert prior["eval/prior_bits_per_code"] < 4 and 1.5 < prior["eval/class_nll"] < 3.0
  assert os.path.exists(os.path.join(prior_dir, "images", "samples_000020.png"))

  sample = run_cli("gen_jax.sample", f"--workdir={prior_dir}", "--num_samples=16", "--class=3")
  assert sample.returncode == 0, sample.stderr[-3000:]
  assert "Wrote 16 samples of class 3" in sample.stdout
  grid = np.asarray(Image.open(os.path.join(prior_dir, "samples.png")))
  assert grid.shape == ((4 * 9 + 1) * 4,) * 2 and grid.std() > 5  # 4x4 digits of 8x8, scale 4.

  config = tiny_config(PRIOR, **{"prior.vqvae_workdir": vq_dir})
  with pytest.raises(ConfigError, match=r"--class: 10 is not a class of this prior: 0..9"):
    vq_prior.generate(config, None, prior_dir, SampleRequest(class_label=10))
  config = tiny_config(PRIOR, **{"prior.vqvae_workdir": vq_dir, "prior.num_classes": 3})
  with pytest.raises(ConfigError, match=r"prior.num_classes: 3, but the VQ-VAE's data 'digits' "
                     "has 10 classes"):
    vq_prior.build_task(config, str(tmp_path / "bad"))


def test_bad_configs_fail_validation_naming_the_field(tmp_path):
  cases = [
      (VQVAE, {"model.num_codes": 1}, "model.num_codes: must be at least 2"),
      (VQVAE, {"model.channels": (8, 8, 8, 8)}, r"model.image_size: 8 must be divisible by"),
      (VQVAE, {"objective.codebook_decay": 1.0}, r"objective.codebook_decay: must be in \[0, 1\)"),
      (VQVAE, {"objective.restart_threshold": -1.0}, "objective.restart_threshold: must be >= 0"),
      (PRIOR, {}, "prior.vqvae_workdir: is empty"),
      (PRIOR, {"model.num_heads": 3}, "model.num_heads: 3 heads do not divide"),
      (PRIOR, {"prior.num_classes": -1}, "prior.num_classes: must be >= 0"),
      (PRIOR, {"sample.temperature": -1.0}, "sample.temperature: must be >= 0"),
      (PRIOR, {"prior.vqvae_workdir": str(tmp_path / "none")},
       "prior.vqvae_workdir: .* has no config.json: not a training workdir"),
      (PRIOR, {"prior.vqvae_workdir": str(tmp_path)},
       "prior.vqvae_workdir: .* holds a 'vae' run, not a 'vqvae' one"),
  ]
  save_workdir_config(tiny_config("configs/vae/digits.py"), str(tmp_path))
  for path, overrides, message in cases:
    with pytest.raises(ConfigError, match=message):
      validate(tiny_config(path, **overrides))
