"""Latent diffusion: the latent of a trained spatial VAE, scaled to unit variance by the number the
first run saves (and a resume reuses), trains through the CLI; samples are decoded to pixel grids;
configs that do not fit the VAE fail naming the field."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from gen_jax.config import ConfigError
from gen_jax.families import images, latent_diffusion, vae
from gen_jax.models.vae import VAE
from gen_jax.objectives import diffusion as diffusion_objectives
from gen_jax.train import train_and_evaluate, validate
from gen_jax.train.workdir import load_workdir_params
from tests.conftest import run_cli, tiny_config
from tests.families.test_diffusion import _grid_shape

CONFIG = "configs/diffusion/latent_digits.py"


@pytest.fixture(scope="module")
def vae_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("vae"))
  train_and_evaluate(tiny_config("configs/vae/digits.py", "latent_tiny",
                                 **{"mesh.num_devices": 1}), workdir)
  return workdir


def test_trains_in_the_vaes_unit_variance_latent_and_samples_decoded_pixels(vae_workdir, tmp_path):
  workdir = str(tmp_path / "ld")
  result = run_cli("gen_jax.main", f"--config={CONFIG}:tiny", f"--workdir={workdir}",
                   f"--config.latent.vae_workdir={vae_workdir}", "--config.mesh.num_devices=1")
  assert result.returncode == 0, result.stderr[-3000:]
  # The scale is 1 / std of the VAE's posterior means of the training images (computed here from
  # the VAE itself).
  vae_config, vae_params = load_workdir_params(vae_workdir)
  data = images.load_data(tiny_config(CONFIG, **{"latent.vae_workdir": vae_workdir}))
  means, _ = vae.model(vae_config).apply({"params": vae_params}, data.train["images"],
                                         method=VAE.encode)
  assert means.shape == (len(data.train["images"]), 4, 4, 4)
  with open(os.path.join(workdir, latent_diffusion.SCALE_FILE)) as f:
    saved = json.load(f)
  np.testing.assert_allclose(saved["scale"], 1 / np.asarray(means).std(), rtol=1e-4)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    last = [r for r in map(json.loads, f) if "eval/loss" in r][-1]
  # A v-model that outputs 0 (the zero-initialized last conv) implies eps = sigma x_t, whose error
  # on unit-variance latents averages E_t[alpha_bar_t]; training goes well below it.
  zero_model = float(np.mean(diffusion_objectives.make_schedule("cosine", 100).alphas_cumprod))
  assert last["step"] == 20 and 0 < last["eval/mse_epsilon"] < 0.8 * zero_model, last
  grid = np.asarray(Image.open(os.path.join(workdir, "images", "samples_000020.png")))
  assert grid.shape == _grid_shape(rows=10, cols=2) and grid.std() > 5  # Decoded 8x8 pixels.

  sample = run_cli("gen_jax.sample", f"--workdir={workdir}", "--num_samples=8", "--class=3",
                   "--guidance=2")
  assert sample.returncode == 0 and "Wrote 8 samples of class 3" in sample.stdout, sample.stderr
  png = np.asarray(Image.open(os.path.join(workdir, "samples.png")))
  assert png.shape == _grid_shape(rows=3, cols=3) and png.std() > 5

  # A resume keeps the saved scale (not re-measured): the latents it trains on are scaled by it.
  with open(os.path.join(workdir, latent_diffusion.SCALE_FILE), "w") as f:
    json.dump({"scale": 1.0}, f)
  config = tiny_config(CONFIG, **{"latent.vae_workdir": vae_workdir, "mesh.num_devices": 1})
  task = latent_diffusion.build_task(config, workdir, resuming=True)
  batch = next(iter(task.train_data))
  assert batch["images"].shape == (16, 4, 4, 4)
  np.testing.assert_allclose(np.asarray(batch["images"]).std(), np.asarray(means).std(), rtol=0.3)


def test_configs_that_do_not_fit_the_vae_fail_naming_the_field(vae_workdir, tmp_path):
  def config(**overrides):
    return tiny_config(CONFIG, **{"latent.vae_workdir": vae_workdir, **overrides})

  validate(config())
  with pytest.raises(ConfigError, match=r"model.image_size: 16, but the VAE of latent.vae_workdir "
                                        r"was trained on 8"):
    validate(config(**{"model.image_size": 16}))
  with pytest.raises(ConfigError, match=r"sample.clip_denoised: latents are not bounded"):
    validate(config(**{"sample.clip_denoised": True}))
  # The latent is 4x4: a U-Net level at 2 and attention at 4 fit; at 8 it does not.
  with pytest.raises(ConfigError, match=r"model.attention_resolutions: 8 is not a resolution of the "
                                        r"U-Net; its levels have \(4,\)"):
    validate(config(**{"model.attention_resolutions": (8,)}))
  vector = str(tmp_path / "vector_vae")
  shutil.copytree(vae_workdir, vector)
  with open(os.path.join(vector, "config.json")) as f:
    saved = json.load(f)
  saved["model"]["spatial_latent"] = False
  with open(os.path.join(vector, "config.json"), "w") as f:
    json.dump(saved, f)
  with pytest.raises(ConfigError, match=r"latent.vae_workdir: .* has a vector latent"):
    validate(config(**{"latent.vae_workdir": vector}))
  with pytest.raises(ConfigError, match=r"latent.vae_workdir: .* holds a 'llm' run, not a 'vae'"):
    os.makedirs(tmp_path / "lm")
    with open(tmp_path / "lm" / "config.json", "w") as f:
      json.dump({**saved, "family": "llm"}, f)
    validate(config(**{"latent.vae_workdir": str(tmp_path / "lm")}))
