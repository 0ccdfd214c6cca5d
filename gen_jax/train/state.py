"""The train state and the optimizer: AdamW with linear warmup, cosine decay and clipping."""
import zlib

import flax
import jax
import ml_collections
import optax

from gen_jax.partition import split_params


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. The optimizer itself is not stored: it is rebuilt from the config."""
  step: jax.Array  # int32 scalar: train steps taken (each makes updates_per_step updates).
  params: dict
  opt_state: optax.OptState
  extra: dict  # Scalars a stage carries between steps (ParamSpec.extra); usually {}.
  # The exponential moving average of params (train.ema_decay > 0; {} otherwise): what evaluation,
  # sample grids and gen_jax.sample use when it is kept.
  ema: dict

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation | dict, extra: dict | None = None, *,
             ema: bool = False) -> "TrainState":
    """`tx` is one optimizer over every leaf, or {name: (owns, optimizer)} for optimizer groups
    (gen_jax.train.OptimizerGroup): then opt_state is {name: that optimizer's state over the
    leaves it owns}."""
    extra = {k: jax.numpy.asarray(v) for k, v in (extra or {}).items()}
    if isinstance(tx, dict):
      opt_state = {name: group_tx.init(split_params(params, owns)[0])
                   for name, (owns, group_tx) in tx.items()}
    else:
      opt_state = tx.init(params)
    return cls(step=jax.numpy.zeros((), jax.numpy.int32), params=params, opt_state=opt_state,
               extra=extra, ema=jax.tree.map(jax.numpy.copy, params) if ema else {})

  def eval_params(self) -> dict:
    """The trainable params evaluation and sampling use: the EMA where one is kept."""
    return self.ema if self.ema else self.params


def rng_for(seed: int, purpose: str) -> jax.Array:
  """A key for one purpose ('init', 'train', 'sample', ...), independent across purposes."""
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(purpose.encode()) & 0x7FFFFFFF)


def updates_per_step(config: ml_collections.ConfigDict) -> int:
  """Optimizer updates in one train step: train.epochs_per_batch passes of train.minibatches."""
  return config.train.epochs_per_batch * config.train.minibatches


def learning_rate_schedule(config: ml_collections.ConfigDict, section: str = "optimizer"
                           ) -> optax.Schedule:
  """Linear warmup to the peak, then cosine decay to min_lr_ratio * peak at train.num_steps; a
  function of the optimizer's update count (optimizer.warmup_steps and train.num_steps count
  train steps, of updates_per_step updates each).

  Warmup starts at peak / warmup_steps rather than 0, so the first update is not wasted.
  """
  o, updates = config[section], updates_per_step(config)
  warmup = min(o.warmup_steps, config.train.num_steps) * updates
  total = config.train.num_steps * updates
  return optax.warmup_cosine_decay_schedule(
      init_value=o.learning_rate / max(warmup, 1), peak_value=o.learning_rate, warmup_steps=warmup,
      decay_steps=max(total, warmup + 1), end_value=o.learning_rate * o.min_lr_ratio)


def _decay_mask(params):
  """Weight decay on matrices (kernels, embeddings) only, never on norm scales or biases."""
  def is_matrix(path, _):
    names = {getattr(k, "key", getattr(k, "name", None)) for k in path}
    return bool(names & {"kernel", "embedding"})
  return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(config: ml_collections.ConfigDict, section: str = "optimizer"
                   ) -> optax.GradientTransformation:
  """AdamW from config[section] (a GAN's discriminator has its own section), with clipping."""
  o = config[section]
  parts = [optax.clip_by_global_norm(o.grad_clip_norm)] if o.grad_clip_norm > 0 else []
  parts.append(optax.adamw(learning_rate_schedule(config, section), b1=o.b1, b2=o.b2, eps=o.eps,
                           weight_decay=o.weight_decay, mask=_decay_mask))
  return optax.chain(*parts)
