"""The vqvae family: a VQ-VAE (van den Oord et al., 2017) with an EMA codebook (Razavi et al.,
2019) and dead-code restarts (Dhariwal et al., 2020), with reconstruction grids at eval.

The gradient trains the encoder and decoder on reconstruction + beta * commitment; the codebook
leaves (quantizer/codebook, cluster_size, embed_sum) get no gradient and are set after every update
by Task.statistics_update from the batch's encoder outputs under the step's starting params.
A VQ-VAE alone has no prior over its codes, so it reports the reconstruction's bits/dim (not a
bound on the data's NLL) and gen_jax.sample writes reconstructions; the vq_prior family trains
the prior and reports the bound.
"""
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gen_jax import data as data_lib
from gen_jax.config.errors import require
from gen_jax.eval import save_image_grid
from gen_jax.families import images
from gen_jax.models.vqvae import VQVAE, VQVAEConfig, nearest_codes
from gen_jax.objectives import vqvae as vq_objectives
from gen_jax.train.task import WEIGHT, ParamSpec, Task

QUANTIZER = "quantizer"
CODEBOOK_LEAVES = ("codebook", "cluster_size", "embed_sum")  # Set by the EMA, never by gradient.
ENCODE_CHUNK = 256  # Images per jitted call when encoding a whole split.


def validate(config: ml_collections.ConfigDict) -> None:
  images.validate_image_config(config)
  m = config.model
  require(len(m.channels) > 0 and all(c > 0 for c in m.channels), "model.channels",
          f"must be a non-empty tuple of positive widths, got {m.channels}")
  require(m.image_size % 2 ** len(m.channels) == 0, "model.image_size",
          f"{m.image_size} must be divisible by 2**len(model.channels) = {2 ** len(m.channels)}")
  require(m.num_res_blocks >= 0, "model.num_res_blocks", f"must be >= 0, got {m.num_res_blocks}")
  require(m.num_codes >= 2, "model.num_codes", f"must be at least 2, got {m.num_codes}")
  require(m.code_dim > 0, "model.code_dim", f"must be positive, got {m.code_dim}")
  o = config.objective
  require(o.commitment_weight >= 0, "objective.commitment_weight",
          f"must be >= 0, got {o.commitment_weight}")
  require(0 <= o.codebook_decay < 1, "objective.codebook_decay",
          f"must be in [0, 1), got {o.codebook_decay}")
  require(o.laplace_epsilon > 0, "objective.laplace_epsilon",
          f"must be positive, got {o.laplace_epsilon}")
  require(o.restart_threshold >= 0, "objective.restart_threshold",
          f"must be >= 0 (0: no restarts), got {o.restart_threshold}")


def model(config) -> VQVAE:
  return VQVAE(VQVAEConfig.from_config(config.model))


def param_spec(config) -> ParamSpec:
  """A random init; every leaf is trainable (the codebook's are set by statistics_update)."""
  net = model(config)
  dummy = jnp.zeros((1, *images.image_shape(config)), jnp.float32)
  return ParamSpec(lambda rng: net.init(rng, dummy)["params"])


def make_loss_fn(config, num_levels: int):
  """loss_fn(params, batch, rng) -> (summed per-image loss, sums); batch["images"]: [b, H, W, C]."""
  net = model(config)

  def loss_fn(params, batch, rng):
    del rng  # The quantizer is deterministic.
    out = net.apply({"params": params}, batch["images"])
    terms = vq_objectives.vqvae_loss(batch["images"], out["decoded"], out["z_e"], out["z_q"],
                                     num_levels, config.objective.commitment_weight)
    w = batch[data_lib.EXAMPLE_WEIGHT]
    sums = {k: (v * w).sum() for k, v in terms.items() if k != "loss"}
    return (terms["loss"] * w).sum(), {WEIGHT: w.sum(), **sums}
  return loss_fn


def make_statistics_update(config):
  """statistics_update(params, batch, rng) -> ({quantizer leaf path: value}, metrics): the EMA
  codebook step and dead-code restarts from the batch's encoder outputs; metrics perplexity (of
  the batch's code usage) and dead_code_restarts (codes moved this step)."""
  net = model(config)
  o, num_codes = config.objective, config.model.num_codes

  def statistics_update(params, batch, rng):
    z_e = net.apply({"params": params}, batch["images"], method=VQVAE.encode)  # [b, h, w, D]
    vectors = z_e.reshape(-1, z_e.shape[-1])  # [b*h*w, D]
    q = params[QUANTIZER]
    codes = nearest_codes(vectors, q["codebook"])
    weights = jnp.repeat(batch[data_lib.EXAMPLE_WEIGHT], z_e.shape[1] * z_e.shape[2])
    cluster_size, embed_sum, codebook = vq_objectives.ema_codebook_update(
        q["cluster_size"], q["embed_sum"], vectors, codes, weights, o.codebook_decay,
        o.laplace_epsilon)
    codebook, cluster_size, embed_sum, restarted = vq_objectives.restart_dead_codes(
        codebook, cluster_size, embed_sum, vectors, weights, o.restart_threshold, rng)
    assigned = {(QUANTIZER, "codebook"): codebook, (QUANTIZER, "cluster_size"): cluster_size,
                (QUANTIZER, "embed_sum"): embed_sum}
    metrics = {"perplexity": vq_objectives.code_perplexity(codes, num_codes, weights),
               "dead_code_restarts": restarted}
    return assigned, metrics
  return statistics_update


def dry_run_inputs(config):
  """(loss_fn, global batch shapes) without reading data; the pixel levels do not change shapes."""
  return make_loss_fn(config, num_levels=256), images.batch_shapes(config)


def reconstruct_fn(config):
  """jitted (params, images [b, H, W, C]) -> (decoder means [b, H, W, C], codes [b, h, w])."""
  net = model(config)

  @jax.jit
  def reconstruct(params, batch_images):
    out = net.apply({"params": params}, batch_images)
    return out["decoded"][0], out["codes"]
  return reconstruct


def padded_chunks(array: np.ndarray, size: int):
  """Yields (chunk [size, ...], number of real rows in it) over the rows of `array`, the last
  chunk padded with zeros: one compiled shape serves a whole split."""
  for start in range(0, len(array), size):
    chunk = array[start:start + size]
    valid = len(chunk)
    if valid < size:
      chunk = np.concatenate([chunk, np.zeros((size - valid,) + chunk.shape[1:], chunk.dtype)])
    yield chunk, valid


def interleave_rows(originals: np.ndarray, reconstructions: np.ndarray) -> tuple[np.ndarray, int]:
  """(grid images, columns): rows of originals, each row followed by its reconstructions."""
  cols = int(math.ceil(math.sqrt(len(originals))))
  rows = []
  for start in range(0, len(originals), cols):
    rows += [originals[start:start + cols], reconstructions[start:start + cols]]
  return np.concatenate(rows), cols


def build_task(config: ml_collections.ConfigDict, workdir: str, resuming: bool = False) -> Task:
  del resuming  # Nothing is derived from the data that a resume must reuse.
  data = images.load_data(config)
  held_out = data.held_out
  reconstruct = reconstruct_fn(config)
  num_codes = config.model.num_codes

  def eval_metrics(totals):
    # Only the reconstruction term: without a prior over the codes this bounds nothing.
    return {"eval/reconstruction_bits_per_dim":
            images.bits_per_dim(totals["reconstruction"] / totals[WEIGHT], config)}

  def on_eval(params, step):
    n = config.sample.num_images
    counts = np.zeros((num_codes,), np.float64)
    recon = []  # The first n reconstructions, for the grid.
    for chunk, valid in padded_chunks(held_out["images"], ENCODE_CHUNK):
      chunk_recon, codes = jax.device_get(reconstruct(params, chunk))
      counts += np.bincount(codes[:valid].reshape(-1), minlength=num_codes)
      recon += list(chunk_recon[:valid][:n - len(recon)])
    grid, cols = interleave_rows(held_out["images"][:n], np.stack(recon))
    images.write_eval_grid(workdir, "reconstructions", step, grid, num_cols=cols)
    return {"eval/perplexity": float(vq_objectives.perplexity_from_counts(jnp.asarray(counts))),
            "eval/codes_used": float((counts > 0).sum())}

  train_data, eval_data = images.pipelines(config, data)
  return Task(
      params=param_spec(config),
      loss_fn=make_loss_fn(config, data.num_levels),
      train_data=train_data,
      eval_data=eval_data,
      eval_metrics=eval_metrics,
      throughput_unit="examples",
      units_per_example=1,
      on_eval=on_eval,
      statistics_update=make_statistics_update(config),
  )


def sample(config, params, workdir: str, request) -> str:
  """A VQ-VAE has no prior to sample from: writes request.num_samples held-out images, each row
  followed by their reconstructions, as WORKDIR/samples.png; returns the path."""
  held_out = images.load_data(config).held_out["images"][:request.num_samples]
  recon, _ = reconstruct_fn(config)(params, held_out)
  grid, cols = interleave_rows(held_out, np.asarray(jax.device_get(recon)))
  path = save_image_grid(grid, os.path.join(workdir, images.SAMPLES_FILE), num_cols=cols, scale=4)
  print(f"Wrote {len(held_out)} held-out images (odd rows) and their reconstructions (even rows) "
        f"to {path}. A VQ-VAE has no prior to sample from: train one with "
        f"configs/vqvae/prior_digits.py --config.prior.vqvae_workdir={workdir} and sample that "
        "workdir.")
  return path
