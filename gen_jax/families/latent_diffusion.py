"""The latent_diffusion family: latent diffusion (Rombach et al., 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models"): the diffusion family's model trained in the spatial
latent space of a trained VAE (latent.vae_workdir), its samples decoded back to pixels.

At build time the VAE encodes the run's images once (the posterior means) and every latent is
multiplied by one scale, 1 / (the training latents' standard deviation), so the diffusion model
sees unit-variance data as its noise schedule assumes (LDM's scale factor). The scale is saved in
the workdir (latent_scale.json) by the first run: a resume and `gen_jax.sample` use that number
rather than re-encoding the data. eval/loss is the diffusion objective on held-out latents.
"""
import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np

from gen_jax import config as config_lib
from gen_jax.config.errors import require
from gen_jax.families import diffusion, images
from gen_jax.families import vae as vae_family
from gen_jax.families.vqvae import ENCODE_CHUNK, padded_chunks
from gen_jax.models.vae import VAE, VAEConfig
from gen_jax.train.task import Task

EARLIER_STAGE_FIELD = "latent.vae_workdir"  # The workdir a run reads; a config without one fails.
SCALE_FILE = "latent_scale.json"


def vae_config(config) -> ml_collections.ConfigDict:
  """The saved config of latent.vae_workdir; ConfigError naming the field unless it is a vae run
  with a spatial latent."""
  path = config.latent.vae_workdir
  require(bool(path), EARLIER_STAGE_FIELD, "is empty; name the workdir of a trained vae run with "
          "model.spatial_latent=True (configs/vae/digits.py:latent)")
  saved = config_lib.load_workdir_config(path)
  require(saved is not None, EARLIER_STAGE_FIELD,
          f"{path!r} has no config.json: not a training workdir")
  require(saved.family == "vae", EARLIER_STAGE_FIELD,
          f"{path!r} holds a {saved.family!r} run, not a 'vae' one")
  require(saved.model.spatial_latent, EARLIER_STAGE_FIELD,
          f"{path!r} has a vector latent (model.spatial_latent=False); the diffusion backbones "
          "denoise a spatial latent [h, w, latent_dim]")
  return saved


def latent_shape(config) -> tuple[int, int, int]:
  """What the backbone denoises: one image's VAE latent [h, w, latent_dim]."""
  return VAE(VAEConfig.from_config(vae_config(config).model)).latent_shape()


def validate(config: ml_collections.ConfigDict) -> None:
  saved = vae_config(config).model
  for name in ("image_size", "image_channels"):
    require(config.model[name] == saved[name], f"model.{name}",
            f"{config.model[name]}, but the VAE of {EARLIER_STAGE_FIELD} was trained on "
            f"{saved[name]} (set model.{name}={saved[name]})")
  require(not config.sample.clip_denoised, "sample.clip_denoised",
          "latents are not bounded like pixels; clipping each step's x0 to [-1, 1] would cut "
          "them: set False")
  diffusion.validate(config, latent_shape(config))


def param_spec(config):
  return diffusion.param_spec(config, latent_shape(config))


def dry_run_inputs(config):
  """(loss_fn, global batch shapes) from the VAE's saved config, without its data or params."""
  shape = latent_shape(config)
  shapes = images.batch_shapes(config)
  shapes["images"] = jax.ShapeDtypeStruct((config.train.batch_size, *shape), np.float32)
  return diffusion.make_loss_fn(config, shape), shapes


def load_vae(config) -> tuple[VAE, dict]:
  """(the VAE, its (EMA) params as uncommitted arrays: usable beside params on any devices)."""
  from gen_jax.train.workdir import load_workdir_params  # It imports the family registry.
  vae_run, params = load_workdir_params(config.latent.vae_workdir, field=EARLIER_STAGE_FIELD)
  return vae_family.model(vae_run), jax.device_put(jax.device_get(params))


def encode_split(net: VAE, params, split: dict) -> np.ndarray:
  """{"images" [n, H, W, C], ...} -> the posterior means [n, h, w, latent_dim]."""
  encode = jax.jit(lambda p, x: net.apply({"params": p}, x, method=VAE.encode)[0])
  means = []
  for chunk, valid in padded_chunks(split["images"], ENCODE_CHUNK):
    means.append(np.asarray(jax.device_get(encode(params, chunk)))[:valid])
  return np.concatenate(means)


def read_scale(workdir: str) -> float | None:
  path = os.path.join(workdir, SCALE_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return float(json.load(f)["scale"])


def decoder(net: VAE, params, scale: float):
  """A jitted decode(latents [n, h, w, c] as the diffusion model sees them) -> images
  [n, H, W, C] in [-1, 1] (the decoder's means)."""
  return jax.jit(lambda z: net.apply({"params": params}, z / scale, method=VAE.decode)[0])


def build_task(config: ml_collections.ConfigDict, workdir: str, resuming: bool = False) -> Task:
  data = images.load_data(config)
  net, vae_params = load_vae(config)
  train_latents = encode_split(net, vae_params, data.train)
  scale = read_scale(workdir) if resuming else None
  if scale is None:
    scale = float(1.0 / train_latents.std())
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, SCALE_FILE), "w") as f:
        json.dump({"scale": scale, "vae_workdir": config.latent.vae_workdir}, f)
  held_out_latents = encode_split(net, vae_params, data.held_out)
  latents = data_with_images(data, train_latents * scale, held_out_latents * scale)
  return diffusion.make_task(config, workdir, latents, latent_shape(config),
                             decode=decoder(net, vae_params, scale))


def data_with_images(data, train: np.ndarray, held_out: np.ndarray):
  """`data` with its splits' "images" replaced (labels and weights kept)."""
  return dataclasses.replace(
      data, train={**data.train, "images": train.astype(np.float32)},
      held_out={**data.held_out, "images": held_out.astype(np.float32)})


def generate(config, params, workdir: str, request):
  """diffusion.generate in the latent space, decoded by the VAE; the workdir's saved scale."""
  scale = read_scale(workdir)
  require(scale is not None, "--workdir", f"{workdir!r} has no {SCALE_FILE}: not a "
          "latent_diffusion run's workdir")
  net, vae_params = load_vae(config)
  return diffusion.generate(config, params, workdir, request, latent_shape(config),
                            decode=decoder(net, vae_params, scale))
