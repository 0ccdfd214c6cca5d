"""The sections every experiment shares: trainer, optimizer, checkpoints, logging, mesh.

A family base (`gen_jax.config.llm`, `gen_jax.config.vae`) starts from `base_config()` and adds its
`model` and `data` sections. Every key any code reads is declared here or in a family base.
"""
import ml_collections

from gen_jax.config.errors import ConfigError, require

MESH_AXES = ("data", "fsdp", "tensor", "sequence", "expert")
DTYPES = ("float32", "bfloat16")

# Logical axis -> mesh axes. Parameters: `embed` is split over fsdp, the head/mlp/vocab dimensions
# over tensor. Activations: the batch over every data-parallel axis, the length over sequence.
DEFAULT_LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp", "expert")),
    ("length", "sequence"),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("expert", "expert"),
    ("head_dim", None),
    ("layers", None),
)


def base_config() -> ml_collections.ConfigDict:
  """The shared sections, with defaults suitable for a small CPU run."""
  config = ml_collections.ConfigDict()
  config.family = ""  # Set by the family base: "llm" or "vae".
  config.preset = ""  # Set by apply_preset.
  config.seed = 0

  config.train = ml_collections.ConfigDict(dict(
      num_steps=1000,
      batch_size=32,  # Global batch, over all devices and accumulation steps.
      grad_accum_steps=1,
      # Each batch is used for epochs_per_batch passes of `minibatches` optimizer updates (PPO's
      # epochs and minibatches; on-policy stages sample a fresh batch per step). 1 and 1: one
      # update per batch.
      epochs_per_batch=1,
      minibatches=1,
      log_every=10,
      eval_every=200,  # Also evaluated at the last step.
      eval_max_batches=50,  # Caps held-out evaluation cost; -1 means the whole held-out split.
      # > 0 keeps an exponential moving average of the weights with this decay (warmed up over
      # the first steps); evaluation, sample grids and gen_jax.sample then use it. 0: none.
      ema_decay=0.0,
      # > 0: training also ends (evaluated and checkpointed as at num_steps) after the first step
      # at which the run's process has used this many CPU seconds (all threads) since its first
      # step: the same compute for every model on a shared machine (benchmarks compare families
      # at one budget). 0: num_steps alone decides.
      time_budget_s=0.0,
  ))
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=3e-4,  # Peak, after linear warmup, then cosine decay to min_lr_ratio * peak.
      warmup_steps=100,
      min_lr_ratio=0.1,
      weight_decay=0.1,  # Decoupled (AdamW), on matrices only: not on norms, biases or scalars.
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      grad_clip_norm=1.0,  # Global norm; 0 disables clipping.
  ))
  config.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=500,  # Also saved at the last step and on SIGTERM.
      max_to_keep=3,
      async_save=True,
  ))
  config.logging = ml_collections.ConfigDict(dict(
      progress_bar=True,
      tensorboard=True,
  ))
  # Mesh axis sizes within one slice (one TPU slice, or one host's GPUs); one axis may be -1 to
  # take the devices the others leave. num_devices=-1 uses every visible device; a positive value
  # uses the first num_devices (e.g. 1 to compare a sharded run against a single device).
  # across_slices: how each axis is also split over slices joined by the slower data-center network
  # (multi-slice TPU); an axis's total size is the product. Its -1 takes the slices the others
  # leave (1 on a single slice): by default slices are data-parallel replicas.
  config.mesh = ml_collections.ConfigDict(dict(
      data=-1, fsdp=1, tensor=1, sequence=1, expert=1, num_devices=-1,
      across_slices=ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, sequence=1, expert=1)),
  ))
  config.logical_axis_rules = DEFAULT_LOGICAL_AXIS_RULES
  return config


def validate_common(config: ml_collections.ConfigDict) -> None:
  """Checks the shared sections; raises ConfigError naming the first bad field."""
  require(config.family != "", "family", "not set; a config must derive from a family base")
  t = config.train
  for name in ("num_steps", "batch_size", "grad_accum_steps", "epochs_per_batch", "minibatches",
               "log_every", "eval_every"):
    require(t[name] > 0, f"train.{name}", f"must be positive, got {t[name]}")
  require(0 <= t.ema_decay < 1, "train.ema_decay", f"must be in [0, 1), got {t.ema_decay}")
  require(t.time_budget_s >= 0, "train.time_budget_s", f"must be >= 0 (0: off), got "
          f"{t.time_budget_s}")
  require(t.eval_max_batches == -1 or t.eval_max_batches > 0, "train.eval_max_batches",
          f"must be positive or -1 (all), got {t.eval_max_batches}")
  require(t.batch_size % (t.minibatches * t.grad_accum_steps) == 0, "train.batch_size",
          f"{t.batch_size} is not divisible by train.minibatches={t.minibatches} x "
          f"train.grad_accum_steps={t.grad_accum_steps}")
  o = config.optimizer
  require(o.learning_rate > 0, "optimizer.learning_rate", f"must be positive, got {o.learning_rate}")
  require(o.warmup_steps >= 0, "optimizer.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
  require(0 <= o.min_lr_ratio <= 1, "optimizer.min_lr_ratio", f"must be in [0, 1], got {o.min_lr_ratio}")
  require(o.weight_decay >= 0, "optimizer.weight_decay", f"must be >= 0, got {o.weight_decay}")
  require(0 <= o.b1 < 1 and 0 <= o.b2 < 1, "optimizer.b1/b2", f"must be in [0, 1), got {o.b1}, {o.b2}")
  require(o.grad_clip_norm >= 0, "optimizer.grad_clip_norm", f"must be >= 0, got {o.grad_clip_norm}")
  c = config.checkpoint
  require(c.every_steps > 0, "checkpoint.every_steps", f"must be positive, got {c.every_steps}")
  require(c.max_to_keep > 0, "checkpoint.max_to_keep", f"must be positive, got {c.max_to_keep}")
  for section, sizes in (("mesh", config.mesh), ("mesh.across_slices", config.mesh.across_slices)):
    for axis in MESH_AXES:
      require(sizes[axis] == -1 or sizes[axis] > 0, f"{section}.{axis}",
              f"must be positive or -1 (fill), got {sizes[axis]}")
    fills = [a for a in MESH_AXES if sizes[a] == -1]
    require(len(fills) <= 1, section, f"at most one axis may be -1, got {fills}")
  _validate_rules(config.logical_axis_rules)


def _validate_rules(rules) -> None:
  for rule in rules:
    if len(rule) != 2:
      raise ConfigError("logical_axis_rules", f"each rule is (logical_name, mesh_axes), got {rule!r}")
    mesh_axes = rule[1] if isinstance(rule[1], (list, tuple)) else (rule[1],)
    for axis in mesh_axes:
      require(axis is None or axis in MESH_AXES, "logical_axis_rules",
              f"rule {tuple(rule)!r} names mesh axis {axis!r}; mesh axes are {MESH_AXES}")


def validate_batch_against_mesh(config: ml_collections.ConfigDict, data_parallel_size: int) -> None:
  """The per-step microbatch must split evenly over the data-parallel devices."""
  t = config.train
  micro = t.batch_size // t.minibatches // t.grad_accum_steps
  require(micro % data_parallel_size == 0, "train.batch_size",
          f"microbatch {micro} (train.batch_size={t.batch_size} / train.minibatches="
          f"{t.minibatches} / train.grad_accum_steps={t.grad_accum_steps}) is not divisible by the "
          f"data-parallel size {data_parallel_size} (mesh.data x mesh.fsdp x mesh.expert)")
