"""The vq_prior family: the second stage of van den Oord et al. (2017), an autoregressive prior
over a trained VQ-VAE's codes (gen_jax's decoder-only Transformer in place of their PixelCNN),
sampled with the KV-cache decoder and decoded by the VQ-VAE.

At build time the VQ-VAE of prior.vqvae_workdir encodes its own data (its source, its
train/held-out split) once: each image becomes the sequence [start, class, c_1 .. c_N] (codes in
raster order; without the class token when prior.num_classes = 0), stored with the VQ-VAE
decoder's -log p(x | codes) of that image. Token ids (gen_jax.models.vqvae.CodePrior): codes
0..K-1, class y = K + y, start = K + num_classes; the class token is predicted too, so the model is
a joint p(y, codes) and --class=y conditions on it.

eval/bits_per_dim = (-log p(y, codes) - log p(x | codes)) / (pixels ln 2): since the encoder is
deterministic, p(x) >= p(y(x), codes(x)) p(x | codes(x)) for the generative model y ~ p(y),
codes ~ p(codes | y), x ~ decoder(codes), so it is an honest upper bound on the data's NLL.
eval/prior_bits_per_code is the codes' own cost given the class.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gen_jax import config as config_lib
from gen_jax import data as data_lib
from gen_jax.config.errors import ConfigError, require
from gen_jax.families import images
from gen_jax.families.llm import validate_transformer_fields
from gen_jax.families import vqvae as vqvae_family
from gen_jax.models.transformer import TransformerConfig
from gen_jax.models.vqvae import VQVAE, CodePrior, VQVAEConfig
from gen_jax.objectives.lm import token_log_probs
from gen_jax.objectives.vae import discretized_logistic_log_prob
from gen_jax.sampling.lm import sample_continuations
from gen_jax.sampling.strategies import SamplingParams
from gen_jax.train.state import rng_for
from gen_jax.train.task import WEIGHT, ParamSpec, Task

EARLIER_STAGE_FIELD = "prior.vqvae_workdir"  # The workdir a run reads; a config without one fails.


def validate(config: ml_collections.ConfigDict) -> None:
  validate_transformer_fields(config.model)
  require(config.prior.num_classes >= 0, "prior.num_classes",
          f"must be >= 0 (0: unconditional), got {config.prior.num_classes}")
  require(config.sample.num_images > 0, "sample.num_images",
          f"must be positive, got {config.sample.num_images}")
  require(config.sample.temperature >= 0, "sample.temperature",
          f"must be >= 0 (0: greedy), got {config.sample.temperature}")
  require(bool(config.prior.vqvae_workdir), EARLIER_STAGE_FIELD,
          "is empty; name the workdir of a trained vqvae run (configs/vqvae/digits.py)")
  vqvae_config(config)


def vqvae_config(config) -> ml_collections.ConfigDict:
  """The saved config of prior.vqvae_workdir; ConfigError naming the field unless it is a vqvae
  run's workdir."""
  path = config.prior.vqvae_workdir
  saved = config_lib.load_workdir_config(path)
  require(saved is not None, EARLIER_STAGE_FIELD, f"{path!r} has no config.json: not a training "
          "workdir")
  require(saved.family == "vqvae", EARLIER_STAGE_FIELD,
          f"{path!r} holds a {saved.family!r} run, not a 'vqvae' one")
  return saved


@dataclasses.dataclass(frozen=True)
class SequenceLayout:
  """How an image's codes become a token sequence (see CodePrior for the token ids)."""
  num_codes: int  # K.
  num_classes: int  # 0: no class token.
  latent_size: int  # h = w of the code grid.
  num_pixels: int  # H * W * C of an image.

  @property
  def codes_per_image(self) -> int:
    return self.latent_size ** 2

  @property
  def prefix_length(self) -> int:
    """Tokens before the codes: start, and the class token when there is one."""
    return 1 + (self.num_classes > 0)

  @property
  def sequence_length(self) -> int:
    return self.prefix_length + self.codes_per_image

  @property
  def vocab_size(self) -> int:
    return self.num_codes + self.num_classes + 1

  @property
  def start_token(self) -> int:
    return self.num_codes + self.num_classes

  def prefixes(self, labels: np.ndarray | None, count: int) -> np.ndarray:
    """[count, prefix_length] int32: start (and class K + label) tokens."""
    prefix = np.full((count, self.prefix_length), self.start_token, np.int32)
    if self.num_classes:
      prefix[:, 1] = self.num_codes + np.asarray(labels, np.int32)
    return prefix


def layout(config) -> SequenceLayout:
  vq = vqvae_config(config).model
  vq_model = VQVAEConfig.from_config(vq)
  return SequenceLayout(vq_model.num_codes, config.prior.num_classes, vq_model.latent_size,
                        vq.image_size ** 2 * vq.image_channels)


def model(config, sequences: SequenceLayout | None = None) -> CodePrior:
  sequences = sequences or layout(config)
  transformer = TransformerConfig(**config.model.to_dict(), vocab_size=sequences.vocab_size,
                                  max_seq_len=sequences.sequence_length)
  return CodePrior(transformer, sequences.num_codes, sequences.num_classes)


def param_spec(config) -> ParamSpec:
  """A random init of the Transformer; every leaf trains (the VQ-VAE is not part of the tree)."""
  sequences = layout(config)
  net = model(config, sequences)
  dummy = jnp.zeros((1, sequences.sequence_length - 1), jnp.int32)
  return ParamSpec(lambda rng: net.init(rng, dummy)["params"])


def make_loss_fn(config, sequences: SequenceLayout):
  """loss_fn(params, batch, rng) -> (summed -log p(class, codes), sums), per image; batch:
  tokens [b, sequence_length] int32, reconstruction_nll [b] (the VQ-VAE decoder's, in nats)."""
  net = model(config, sequences)
  first_code = sequences.prefix_length - 1  # The target index of c_1.

  def loss_fn(params, batch, rng):
    del rng  # No dropout.
    tokens = batch["tokens"]
    log_probs = token_log_probs(net.apply({"params": params}, tokens[:, :-1]), tokens[:, 1:])
    code_nll = -log_probs[:, first_code:].sum(axis=-1)  # [b]
    class_nll = -log_probs[:, :first_code].sum(axis=-1)  # [b]; 0 without a class token.
    w = batch[data_lib.EXAMPLE_WEIGHT]
    sums = {WEIGHT: w.sum(), "code_nll": (code_nll * w).sum(),
            "reconstruction_nll": (batch["reconstruction_nll"] * w).sum()}
    if sequences.num_classes:
      sums["class_nll"] = (class_nll * w).sum()
    return ((code_nll + class_nll) * w).sum(), sums
  return loss_fn


def batch_shapes(config, sequences: SequenceLayout) -> dict[str, jax.ShapeDtypeStruct]:
  b = config.train.batch_size
  return {"tokens": jax.ShapeDtypeStruct((b, sequences.sequence_length), np.int32),
          "labels": jax.ShapeDtypeStruct((b,), np.int32),
          "reconstruction_nll": jax.ShapeDtypeStruct((b,), np.float32),
          data_lib.EXAMPLE_WEIGHT: jax.ShapeDtypeStruct((b,), np.float32)}


def dry_run_inputs(config):
  """(loss_fn, global batch shapes) from the VQ-VAE's saved config, without its data or params."""
  sequences = layout(config)
  return make_loss_fn(config, sequences), batch_shapes(config, sequences)


def load_vqvae(config) -> tuple[ml_collections.ConfigDict, VQVAE, dict]:
  """(the VQ-VAE run's config, its model, its params as uncommitted arrays: usable beside
  params on any devices)."""
  vqvae_config(config)
  from gen_jax.train.workdir import load_workdir_params  # It imports the family registry.
  vq_config, params = load_workdir_params(config.prior.vqvae_workdir, field=EARLIER_STAGE_FIELD)
  return vq_config, vqvae_family.model(vq_config), jax.device_put(jax.device_get(params))


def encode_split(vq_net: VQVAE, vq_params, split: dict, num_levels: int,
                 sequences: SequenceLayout) -> dict[str, np.ndarray]:
  """{"images", "labels"} -> {"tokens" [n, sequence_length], "labels" [n], "reconstruction_nll"
  [n]}: each image's token sequence and the decoder's -log p(x | its codes) in nats."""

  codes, nll = [], []
  for chunk, valid in vqvae_family.padded_chunks(split["images"], vqvae_family.ENCODE_CHUNK):
    chunk_codes, chunk_nll = jax.device_get(_encode(vq_net, vq_params, chunk, num_levels))
    codes.append(chunk_codes[:valid])
    nll.append(chunk_nll[:valid])
  codes = np.concatenate(codes).astype(np.int32)
  labels = split["labels"].astype(np.int32)
  tokens = np.concatenate([sequences.prefixes(labels, len(codes)), codes], axis=1)
  return {"tokens": tokens, "labels": labels,
          "reconstruction_nll": np.concatenate(nll).astype(np.float32)}


def sample_images(net: CodePrior, params, vq_net: VQVAE, vq_params, sequences: SequenceLayout,
                  labels: np.ndarray | None, count: int, temperature: float, rng: jax.Array
                  ) -> np.ndarray:
  """Codes sampled with the KV-cache decoder (after the start and class tokens), decoded by the
  VQ-VAE: [count, H, W, C] decoder means in [-1, 1]."""
  prompts = sequences.prefixes(labels, count)
  codes = sample_continuations(
      net, params, jnp.asarray(prompts), jnp.full((count,), prompts.shape[1], jnp.int32),
      max_new_tokens=sequences.codes_per_image, sampling=SamplingParams(temperature=temperature),
      rng=rng, eos_id=-1)  # No end token: every row makes all its codes.
  side = sequences.latent_size
  codes = np.asarray(jax.device_get(codes)).reshape(count, side, side)  # Raster order.
  return np.asarray(jax.device_get(_decode_codes(vq_net, vq_params, codes)))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _encode(vq_net: VQVAE, vq_params, batch_images, num_levels: int):
  """images [b, H, W, C] -> (codes [b, h*w] in raster order, -log p(x | codes) [b] in nats)."""
  codes = vq_net.apply({"params": vq_params}, batch_images, method=VQVAE.encode_codes)
  decoded = vq_net.apply({"params": vq_params}, codes, method=VQVAE.decode_codes)
  nll = -discretized_logistic_log_prob(batch_images, *decoded, num_levels)
  return codes.reshape(codes.shape[0], -1), nll.reshape(nll.shape[0], -1).sum(axis=-1)


@functools.partial(jax.jit, static_argnums=0)
def _decode_codes(vq_net: VQVAE, vq_params, codes):
  return vq_net.apply({"params": vq_params}, codes, method=VQVAE.decode_codes)[0]


def grid_labels(sequences: SequenceLayout, count: int) -> np.ndarray | None:
  """The classes of a grid's images: cycling through them (None for an unconditional prior)."""
  return np.arange(count) % sequences.num_classes if sequences.num_classes else None


def build_task(config: ml_collections.ConfigDict, workdir: str, resuming: bool = False) -> Task:
  del resuming  # The codes are recomputed from the (fixed) VQ-VAE at every start.
  sequences = layout(config)
  vq_config = vqvae_config(config)
  m = vq_config.model
  data = data_lib.load_images(vq_config.data, m.image_size, m.image_channels, vq_config.seed)
  if sequences.num_classes:
    require(sequences.num_classes == data.num_classes, "prior.num_classes",
            f"{sequences.num_classes}, but the VQ-VAE's data {vq_config.data.source!r} has "
            f"{data.num_classes} classes; use {data.num_classes}, or 0 for an unconditional prior")
  num_train = len(data.train["images"])
  require(num_train >= config.train.batch_size // jax.process_count(), "train.batch_size",
          f"{config.train.batch_size} exceeds the {num_train} training images")
  _, vq_net, vq_params = load_vqvae(config)
  train_arrays, eval_arrays = (
      encode_split(vq_net, vq_params, split, data.num_levels, sequences)
      for split in (data.train, data.held_out))
  net = model(config, sequences)
  nats_to_bits = 1 / math.log(2)

  def eval_metrics(totals):
    weight = totals[WEIGHT]
    return {
        "eval/prior_bits_per_code":
            totals["code_nll"] * nats_to_bits / (weight * sequences.codes_per_image),
        # loss_sum is -log p(class, codes).
        "eval/bits_per_dim": (totals["loss_sum"] + totals["reconstruction_nll"]) * nats_to_bits
                             / (weight * sequences.num_pixels),
    }

  def on_eval(params, step):
    n = config.sample.num_images
    samples = sample_images(net, params, vq_net, vq_params, sequences, grid_labels(sequences, n),
                            n, config.sample.temperature, rng_for(config.seed, "sample"))
    images.write_eval_grid(workdir, "samples", step, samples,  # One column per class.
                           num_cols=sequences.num_classes or None)
    return {}

  train_data, eval_data = data_lib.host_pipelines(
      train_arrays, eval_arrays, global_batch_size=config.train.batch_size,
      grad_accum_steps=config.train.grad_accum_steps,
      eval_max_batches=config.train.eval_max_batches, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  return Task(
      params=param_spec(config),
      loss_fn=make_loss_fn(config, sequences),
      train_data=train_data,
      eval_data=eval_data,
      eval_metrics=eval_metrics,
      throughput_unit="examples",
      units_per_example=1,
      on_eval=on_eval,
  )


def generate(config, params, workdir: str, request):
  """(request.num_samples images decoded from sampled codes, what they are): all of class
  request.class_label, or cycling through the classes; the temperature is request.temperature
  when > 0, else config.sample.temperature."""
  del workdir
  sequences = layout(config)
  count = request.num_samples
  if request.class_label is None:
    labels = grid_labels(sequences, count)
  else:
    if not sequences.num_classes:
      raise ConfigError("--class", "this prior is unconditional (prior.num_classes=0)")
    if not 0 <= request.class_label < sequences.num_classes:
      raise ConfigError("--class", f"{request.class_label} is not a class of this prior: "
                        f"0..{sequences.num_classes - 1}")
    labels = np.full((count,), request.class_label)
  temperature = request.temperature if request.temperature > 0 else config.sample.temperature
  _, vq_net, vq_params = load_vqvae(config)
  samples = sample_images(model(config, sequences), params, vq_net, vq_params, sequences, labels,
                          count, temperature, jax.random.key(request.seed))
  what = "samples" if labels is None else (
      f"samples of class {request.class_label}" if request.class_label is not None
      else "samples, cycling through the classes")
  return samples, what
