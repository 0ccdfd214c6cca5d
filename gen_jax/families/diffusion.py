"""The diffusion family: a denoising diffusion model (Ho et al., 2020) with a U-Net or DiT backbone,
class-conditional with classifier-free guidance (Ho & Salimans, 2022), sampled by DDPM, DDIM or
DPM-Solver++ (gen_jax.sampling.diffusion); PNG sample grids at eval."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gen_jax import data as data_lib
from gen_jax.config.errors import require
from gen_jax.families import conditioning as conditioning_lib
from gen_jax.families import images
from gen_jax.families.conditioning import Conditioning
from gen_jax.models.dit import DiT, DiTConfig, validate_dit
from gen_jax.models.unet import UNet, UNetConfig, validate_unet
from gen_jax.objectives import diffusion as objective_lib
from gen_jax.sampling import diffusion as samplers
from gen_jax.train.state import rng_for
from gen_jax.train.task import WEIGHT, ParamSpec, Task

BACKBONES = ("unet", "dit")


def validate(config: ml_collections.ConfigDict, shape: tuple[int, int, int] | None = None) -> None:
  """ConfigError naming the first bad field; `shape`: what the backbone denoises, if not the
  images (latent diffusion's latents)."""
  images.validate_image_config(config)
  m, d, s = config.model, config.diffusion, config.sample
  require(m.backbone in BACKBONES, "model.backbone", f"{m.backbone!r} is not one of {BACKBONES}")
  t = config.text
  if t.encoder:
    require(m.context_dim > 0, "model.context_dim",
            f"must be text.encoder's width (> 0) to attend to its states, got {m.context_dim}")
    require(m.num_classes == 0, "model.num_classes",
            f"{m.num_classes}: with text.encoder the classes condition through their captions; "
            "set 0")
    require(t.max_tokens > 0, "text.max_tokens", f"must be positive, got {t.max_tokens}")
    require("{}" in t.caption_template, "text.caption_template",
            f"{t.caption_template!r} has no {{}} for the class name")
  else:
    require(m.context_dim == 0, "model.context_dim",
            f"{m.context_dim}: cross-attention needs text.encoder (a language model); set 0")
  (validate_unet if m.backbone == "unet" else validate_dit)(backbone_fields(config, shape))
  require(d.schedule in objective_lib.SCHEDULES, "diffusion.schedule",
          f"{d.schedule!r} is not one of {objective_lib.SCHEDULES}")
  require(d.num_timesteps > 0, "diffusion.num_timesteps",
          f"must be positive, got {d.num_timesteps}")
  require(d.objective in objective_lib.OBJECTIVES, "diffusion.objective",
          f"{d.objective!r} is not one of {objective_lib.OBJECTIVES}")
  require(0 <= d.condition_dropout < 1, "diffusion.condition_dropout",
          f"must be in [0, 1), got {d.condition_dropout}")
  require(s.clip_denoised or d.objective != "epsilon" or d.schedule != "cosine",
          "diffusion.objective",
          "'epsilon' with the cosine schedule needs sample.clip_denoised: unclipped, the first "
          "sampling step multiplies the noise estimate's error by ~sqrt(alpha_bar_T-k / "
          "alpha_bar_T) (hundreds, alpha_bar_T being ~2e-9); use 'v' or 'x0'")
  require(s.sampler in samplers.SAMPLERS, "sample.sampler",
          f"{s.sampler!r} is not one of {samplers.SAMPLERS}")
  require(0 < s.num_steps <= d.num_timesteps, "sample.num_steps",
          f"must be in [1, diffusion.num_timesteps={d.num_timesteps}], got {s.num_steps}")
  require(s.eta >= 0, "sample.eta", f"must be >= 0, got {s.eta}")
  require(s.eta == 0 or s.sampler == "ddim", "sample.eta",
          f"only the ddim sampler uses eta; got {s.eta} with sample.sampler={s.sampler!r}")
  require(s.guidance_scale >= 0, "sample.guidance_scale", f"must be >= 0, got {s.guidance_scale}")
  require(s.guidance_scale == 1 or m.num_classes > 0 or t.encoder, "sample.guidance_scale",
          f"guidance ({s.guidance_scale}) needs a conditioned model (model.num_classes > 0 or "
          "text.encoder); use 1 for an unconditional one")
  require(s.guidance_scale == 1 or d.condition_dropout > 0, "diffusion.condition_dropout",
          f"guidance (sample.guidance_scale={s.guidance_scale}) needs the unconditional model that "
          "condition dropout trains; got 0")


def backbone_fields(config, shape: tuple[int, int, int] | None = None) -> dict:
  """config.model's fields, with image_size / image_channels those of `shape` [H, W, C] when the
  backbone denoises something other than the images (latent diffusion's latents)."""
  fields = config.model.to_dict()
  if shape is not None:
    fields.update(image_size=shape[0], image_channels=shape[2])
  return fields


def model(config, shape: tuple[int, int, int] | None = None):
  """The backbone config.model.backbone names, denoising images or arrays of `shape`."""
  fields = backbone_fields(config, shape)
  if config.model.backbone == "dit":
    return DiT(DiTConfig.from_config(fields))
  return UNet(UNetConfig.from_config(fields))


def schedule(config) -> objective_lib.Schedule:
  return objective_lib.make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)


def param_spec(config, shape: tuple[int, int, int] | None = None) -> ParamSpec:
  """A random init; every parameter trains."""
  net = model(config, shape)
  x = jnp.zeros((1, *(shape or images.image_shape(config))), jnp.float32)
  labels = jnp.zeros((1,), jnp.int32) if config.model.num_classes > 0 else None
  t = jnp.zeros((1,), jnp.float32)  # A context, when there is one, is the model's null default.
  return ParamSpec(lambda rng: net.init(rng, x, t, labels=labels)["params"])


def make_loss_fn(config, shape: tuple[int, int, int] | None = None,
                 conditioning: Conditioning | None = None):
  """loss_fn(params, batch, rng) -> (summed per-image MSE on the objective's target, sums);
  batch["images"] [b, *shape] (the images by default).

  Each image gets a uniform timestep and fresh noise; a conditioned model sees the null condition
  (the null class, or the all-masked context) instead of its label's with probability
  diffusion.condition_dropout. `conditioning` (default: the config's classes; a text-conditioned
  run passes its caption table) turns labels into the backbone's arguments. The held-out pass
  computes the same quantity, so eval/loss is the training objective on unseen images;
  eval/mse_epsilon, mse_v and mse_x0 are the implied predictions' errors.
  """
  net, sched = model(config, shape), schedule(config)
  d = config.diffusion
  conditioning = conditioning or Conditioning(config.model.num_classes)

  def loss_fn(params, batch, rng):
    x0 = batch["images"]  # [b, H, W, C]
    b = x0.shape[0]
    t_rng, noise_rng, drop_rng, dropout_rng = jax.random.split(rng, 4)
    t = objective_lib.sample_timesteps(t_rng, b, d.num_timesteps)
    noise = jax.random.normal(noise_rng, x0.shape, jnp.float32)
    alpha, sigma = objective_lib.alpha_sigma(sched, t, x0.ndim)
    x_t = objective_lib.q_sample(sched, x0, t, noise)
    dropped = jax.random.uniform(drop_rng, (b,)) < d.condition_dropout
    condition = conditioning.of_labels(batch["labels"].astype(jnp.int32), dropped)
    prediction = net.apply({"params": params}, x_t, t.astype(jnp.float32), **condition,
                           train=True, rngs={"dropout": dropout_rng})
    terms = objective_lib.diffusion_loss(prediction, x0, noise, alpha, sigma, d.objective)
    w = batch[data_lib.EXAMPLE_WEIGHT]
    sums = {k: (v * w).sum() for k, v in terms.items() if k != "loss"}
    return (terms["loss"] * w).sum(), {WEIGHT: w.sum(), **sums}
  return loss_fn


def dry_run_inputs(config):
  """(loss_fn, global batch shapes) without reading data."""
  return make_loss_fn(config), images.batch_shapes(config)


def make_sampler(config, guidance: float, num_samples: int,
                 shape: tuple[int, int, int] | None = None):
  """A jitted run(params, rng, condition, null_condition) -> samples [n, *shape] (images
  [n, H, W, C] by default) with config.sample's sampler; condition and null_condition are the
  backbone's keyword arguments for the n images (Conditioning.of_labels / null; {} for an
  unconditional model), mixed by classifier-free guidance at scale `guidance`."""
  net, sched = model(config, shape), schedule(config)
  s = config.sample
  shape = (num_samples, *(shape or images.image_shape(config)))

  @jax.jit
  def run(params, rng, condition: dict, null_condition: dict):
    def apply_fn(x, t, kwargs):
      return net.apply({"params": params}, x, t, **kwargs)

    model_fn = samplers.classifier_free_guidance(apply_fn, condition, null_condition, guidance)
    return samplers.sample(s.sampler, model_fn, sched, config.diffusion.objective, rng, shape,
                           num_steps=s.num_steps, eta=s.eta, clip_x0=s.clip_denoised)
  return run


def build_task(config: ml_collections.ConfigDict, workdir: str, resuming: bool = False) -> Task:
  del resuming  # Nothing is derived from the data that a resume must reuse.
  return make_task(config, workdir, images.load_data(config))


def make_task(config, workdir: str, data: data_lib.ImageData,
              shape: tuple[int, int, int] | None = None, decode=None) -> Task:
  """The training task on `data`, whose "images" [n, *shape] the backbone denoises (the images
  themselves by default); decode(samples) -> images [n, H, W, C] for the eval grids."""
  num_classes = config.model.num_classes
  require(num_classes == 0 or num_classes == data.num_classes, "model.num_classes",
          f"{num_classes} but the data ({config.data.source!r}) has {data.num_classes} classes")
  conditioning = conditioning_lib.for_training(config, data.class_names, workdir)
  # A conditioned grid has one row per class: sample.num_images rounded up to a multiple.
  rows = conditioning.num_classes
  per_class = math.ceil(config.sample.num_images / rows) if rows else 0
  num_images = per_class * rows if rows else config.sample.num_images
  labels = jnp.repeat(jnp.arange(rows, dtype=jnp.int32), per_class)
  condition, null = conditioning.of_labels(labels), conditioning.null(num_images)
  run = make_sampler(config, config.sample.guidance_scale, num_images, shape)

  def on_eval(params, step):
    samples = run(params, rng_for(config.seed, "sample"), condition, null)
    images.write_eval_grid(workdir, "samples", step, decode(samples) if decode else samples,
                           num_cols=per_class or None)
    return {}

  train_data, eval_data = images.pipelines(config, data)
  return Task(
      params=param_spec(config, shape),
      loss_fn=make_loss_fn(config, shape, conditioning),
      train_data=train_data,
      eval_data=eval_data,
      eval_metrics=lambda totals: {},  # eval/loss and eval/mse_* are the loop's weighted means.
      throughput_unit="examples",
      units_per_example=1,
      on_eval=on_eval,
  )


def _sample_condition(config, workdir: str, request) -> tuple[dict, dict, str]:
  """(condition, null condition, what they are) of request.num_samples images: a class-conditional
  model's --class (default: cycling through the classes); a text-conditioned one's --prompt, or
  --class's caption, or the captions in turn."""
  n, label = request.num_samples, request.class_label
  if config.text.encoder:
    texts = conditioning_lib.saved_captions(workdir)
    require(not (request.prompt and label is not None), "--prompt",
            "give --prompt or --class, not both")
    if request.prompt:
      texts, what = [request.prompt], f"samples of {request.prompt!r}"
    elif label is not None:
      require(0 <= label < len(texts), "--class", f"must be in [0, {len(texts)}), got {label}")
      texts, what = [texts[label]], f"samples of {texts[label]!r}"
    else:
      what = "samples"
    encoder = conditioning_lib.load_encoder(config)
    context, mask = encoder.encode(texts, "--prompt")
    rows = np.arange(n) % len(texts)
    table = conditioning_lib.Conditioning(len(texts), context, mask)
    return table.of_labels(jnp.asarray(rows)), table.null(n), what
  require(not request.prompt, "--prompt", "the model is not text-conditioned (text.encoder is "
          "empty)")
  num_classes = config.model.num_classes
  table = conditioning_lib.Conditioning(num_classes)
  if num_classes == 0:
    require(label is None, "--class", "the model is unconditional (model.num_classes = 0)")
    return {}, {}, "samples"
  if label is None:
    labels, what = np.arange(n) % num_classes, "samples"
  else:
    require(0 <= label < num_classes, "--class", f"must be in [0, {num_classes}), got {label}")
    labels, what = np.full((n,), label), f"samples of class {label}"
  return table.of_labels(jnp.asarray(labels, jnp.int32)), table.null(n), what


def generate(config, params, workdir: str, request, shape: tuple[int, int, int] | None = None,
             decode=None):
  """(request.num_samples images [n, H, W, C], what they are), conditioned as _sample_condition
  says, with guidance request.guidance (None: config.sample.guidance_scale). `shape` and `decode`
  as in make_task.
  """
  guidance = config.sample.guidance_scale if request.guidance is None else request.guidance
  require(guidance >= 0, "--guidance", f"must be >= 0, got {guidance}")
  condition, null, what = _sample_condition(config, workdir, request)
  require(guidance == 1 or condition, "--guidance",
          f"guidance ({guidance}) needs a conditioned model; this one is unconditional")
  run = make_sampler(config, float(guidance), request.num_samples, shape)
  samples = run(params, jax.random.key(request.seed), condition, null)
  return (decode(samples) if decode else samples), what
