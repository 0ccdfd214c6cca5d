"""The one training loop every family shares.

It validates the config, builds the mesh, initializes (or restores) the sharded state, runs the
jitted step, evaluates, logs, checkpoints, and stops cleanly on SIGTERM or a non-finite metric.
"""
import dataclasses
import math
import os
import signal
import threading
import time
from typing import Callable

import flax.linen as nn
import jax
import ml_collections
import optax

from gen_jax import config as config_lib
from gen_jax import families, parallel
from gen_jax.config.common import validate_batch_against_mesh, validate_common
from gen_jax import partition
from gen_jax.train.checkpoint import Checkpointer
from gen_jax.train.metrics import MetricWriter, ProgressBar, latest_metrics
from gen_jax.train.state import TrainState, learning_rate_schedule, make_optimizer, rng_for
from gen_jax.train.step import Phase, make_eval_step, make_train_step
from gen_jax.train.task import WEIGHT, LossFn, ParamSpec, Task

# How a run proceeds: a resume may change these sections (more steps, another learning rate or
# mesh). Every other section (model, data, init, a family's objective settings) fixes what a
# checkpoint means, as do the fields in RESUME_FIXED_FIELDS, and a resume must not change them.
RESUMABLE_SECTIONS = ("preset", "train", "optimizer", "discriminator_optimizer", "checkpoint",
                      "logging", "mesh", "logical_axis_rules", "sample")
RESUME_FIXED_FIELDS = ("train.ema_decay",)  # Whether the state holds an EMA.


class NonFiniteError(FloatingPointError):
  """A training metric became NaN or inf; the message names the metric and the step."""


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the whole config without touching devices or compiling anything."""
  validate_common(config)
  families.get(config.family).validate(config)


def _check_resume_compatible(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict):
  def flatten(node, prefix):
    if isinstance(node, (dict, ml_collections.ConfigDict)):
      out = {}
      for key in node.keys():
        out.update(flatten(node[key], f"{prefix}.{key}" if prefix else key))
      return out
    return {prefix: list(node) if isinstance(node, tuple) else node}
  def fixed(c):
    flat = flatten(c, "")
    return {k: v for k, v in flat.items()
            if k.split(".")[0] not in RESUMABLE_SECTIONS or k in RESUME_FIXED_FIELDS}
  old, new = fixed(saved), fixed(config)
  for field in sorted(set(old) | set(new)):
    if old.get(field) != new.get(field):
      raise config_lib.ConfigError(
          field, f"the workdir holds a run with {old.get(field)!r} but this run has "
          f"{new.get(field)!r}; a resume can change only {RESUMABLE_SECTIONS} (not "
          f"{RESUME_FIXED_FIELDS}). Use a new --workdir or the original value.")


@dataclasses.dataclass(frozen=True)
class StateLayout:
  """A run's state from shapes alone: what `abstract_train_state` returns.

  `abstract` is the TrainState (trainable params and optimizer state) and `abstract_frozen` the
  frozen params, as ShapeDtypeStructs carrying their shardings; nothing is allocated until
  `create`.
  """
  abstract: TrainState
  abstract_frozen: dict
  tx: optax.GradientTransformation | dict  # {group: (owns, optimizer)} with ParamSpec.optimizers.
  spec: ParamSpec
  _init_state: Callable[[jax.Array], TrainState]
  _init_frozen: Callable[[jax.Array], dict]

  def create(self, rng: jax.Array, *, with_state: bool = True) -> tuple[TrainState | None, dict]:
    """(state, frozen) made in their shards: the seeded random init with the spec's pretrained
    values in place of theirs; with_state=False builds only the frozen part (for a resume, whose
    state comes from the checkpoint)."""
    values = self.spec.pretrained() if self.spec.pretrained is not None else {}
    known = set(partition.flatten(self.abstract.params)) | set(
        partition.flatten(self.abstract_frozen))
    unknown = sorted("/".join(p) for p in values if p not in known)
    if unknown:
      raise ValueError(f"pretrained parameters {unknown[:5]} are not in the model")
    frozen = partition.place_values(self._init_frozen(rng), values)
    if not with_state:
      return None, frozen
    state = self._init_state(rng)
    # Adam's moments start at zero whatever the values, so only the params change.
    return state.replace(params=partition.place_values(state.params, values)), frozen


def abstract_train_state(spec: ParamSpec, config, mesh) -> StateLayout:
  """The state's shapes and shardings, and jitted inits that create it in its shards.

  `jax.eval_shape` traces the init, the parameters' logical axis names give each leaf its
  sharding, and the inits (jitted with those out_shardings) make every shard in place. The
  spec's `trainable` splits the params: the optimizer state covers the trainable part only.
  """
  if spec.optimizers:
    tx = {g.name: (g.owns, make_optimizer(config, g.section)) for g in spec.optimizers}
  else:
    tx = make_optimizer(config)
  rules = parallel.rules_tuple(config.logical_axis_rules)

  def init_boxed(rng):
    trainable, frozen = partition.split_params(spec.init(rng), spec.trainable)
    return TrainState.create(trainable, tx, spec.extra, ema=config.train.ema_decay > 0), frozen

  rng = rng_for(config.seed, "init")  # Eager: on this host, not on the mesh (maybe compile-only).
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_boxed, rng)
    shardings = parallel.logical_shardings(boxed, mesh, rules)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nn.meta.unbox(boxed), shardings)
  unboxed = lambda rng: nn.meta.unbox(init_boxed(rng))  # noqa: E731
  return StateLayout(
      abstract=abstract[0], abstract_frozen=abstract[1], tx=tx, spec=spec,
      _init_state=jax.jit(lambda rng: unboxed(rng)[0], out_shardings=shardings[0]),
      _init_frozen=jax.jit(lambda rng: unboxed(rng)[1], out_shardings=shardings[1]))


def build_train_step(config, layout: StateLayout, loss_fn: LossFn, *,
                     phase_losses: dict[str, LossFn] | None = None, experience=None,
                     statistics_update=None):
  """The (unjitted) train step for `config`'s trainer settings and the layout's optimizers; with
  optimizer groups (ParamSpec.optimizers) `phase_losses` gives each group's loss by name."""
  groups = layout.spec.optimizers
  names = [g.name for g in groups]
  if sorted(names) != sorted(phase_losses or {}):
    raise ValueError(f"the param spec's optimizer groups {names} and the task's phase losses "
                     f"{sorted(phase_losses or {})} differ")
  phases = tuple(Phase(g.name, phase_losses[g.name], g.owns, layout.tx[g.name][1]) for g in groups)
  return make_train_step(loss_fn, None if groups else layout.tx, learning_rate_schedule(config),
                         config.train.grad_accum_steps, experience=experience,
                         epochs=config.train.epochs_per_batch,
                         minibatches=config.train.minibatches, phases=phases,
                         ema_decay=config.train.ema_decay, statistics_update=statistics_update)


class _CpuBudget:
  """Asked after every step: whether the process has used `seconds` of CPU time (all threads)
  since the first step (whose compilation would dominate a small budget); hosts agree by taking
  process 0's answer. seconds 0: never."""

  def __init__(self, seconds: float):
    self.seconds, self._start = seconds, None

  def spent(self) -> bool:
    if not self.seconds:
      return False
    if self._start is None:  # After the first step.
      self._start = time.process_time()
      return False
    spent = time.process_time() - self._start >= self.seconds
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      spent = bool(multihost_utils.broadcast_one_to_all(spent))
    return spent


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after every step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # Signals need the main thread.
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _check_finite(step_metrics: list[tuple[int, dict]]) -> None:
  for step, metrics in step_metrics:
    for name, value in metrics.items():
      value = float(value)
      if not math.isfinite(value):
        raise NonFiniteError(f"train/{name} is {value} at step {step}; stopping. The last "
                             "checkpoint before it is intact.")


class _StepLog:
  """Collects each step's device metrics without syncing, and on flush fetches them, stops on
  NaN/inf (naming the step), computes throughput and writes the newest to every sink."""

  def __init__(self, writer: MetricWriter, bar: ProgressBar, *, first_step: int, unit: str,
               units_per_step: int, last: dict[str, float], progress_metric: str = "loss"):
    self._writer, self._bar, self._first_step = writer, bar, first_step
    self._progress_metric = f"train/{progress_metric}"
    self._unit, self._units_per_step = unit, units_per_step
    self._pending: list[tuple[int, dict]] = []
    self._window_start = time.perf_counter()
    self.last = dict(last)  # Newest value of every metric, returned by the loop.

  def add(self, step: int, metrics: dict) -> None:
    self._pending.append((step, metrics))

  def flush(self, step: int) -> None:
    if not self._pending:
      return
    fetched = jax.device_get(self._pending)
    window_steps = len(self._pending)
    self._pending.clear()
    _check_finite(fetched)
    elapsed = time.perf_counter() - self._window_start
    metrics = {f"train/{k}": float(v) for k, v in fetched[-1][1].items()}
    rate = None
    if step == self._first_step:  # This window is the first step, compilation included.
      metrics["train/first_step_sec"] = elapsed
    else:
      rate = self._units_per_step * window_steps / elapsed
      metrics[f"train/{self._unit}_per_sec"] = rate
    self._writer.write(step, metrics)
    self._bar.update(window_steps, metrics[self._progress_metric], rate)
    self.last.update(metrics)
    self._window_start = time.perf_counter()

  def write_eval(self, step: int, metrics: dict[str, float]) -> None:
    self._writer.write(step, metrics)
    self.last.update(metrics)
    self._bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    self._window_start = time.perf_counter()  # Evaluation time is not training throughput.


def evaluate(task: Task, eval_step, params, mesh, rng) -> dict[str, float]:
  """One pass over the held-out data; every statistic is a weighted mean over counted units."""
  totals: dict[str, float] = {}
  for batch in task.eval_data():
    sums = jax.device_get(eval_step(params, parallel.shard_batch(batch, mesh), rng))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  weight = totals.get(WEIGHT, 0.0)
  if weight <= 0:
    return {}
  metrics = {"eval/loss": totals["loss_sum"] / weight}
  metrics.update({f"eval/{k}": v / weight for k, v in totals.items()
                  if k not in ("loss_sum", WEIGHT)})
  metrics.update(task.eval_metrics(totals))
  return metrics


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from its newest checkpoint; returns the last metrics."""
  validate(config)
  family = families.get(config.family)
  mesh = parallel.make_mesh(config.mesh)
  validate_batch_against_mesh(config, parallel.data_parallel_size(mesh))
  os.makedirs(workdir, exist_ok=True)
  ckpt = Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep,
                      async_save=config.checkpoint.async_save)
  start = ckpt.latest_step()
  resuming = start is not None
  if resuming:  # Without a checkpoint there is nothing to be compatible with.
    saved = config_lib.load_workdir_config(workdir)
    if saved is not None:
      _check_resume_compatible(saved, config)

  task = family.build_task(config, workdir, resuming=resuming)
  is_main = jax.process_index() == 0
  if is_main:
    config_lib.save_workdir_config(config, workdir)
  layout = abstract_train_state(task.params, config, mesh)
  rules = parallel.rules_tuple(config.logical_axis_rules)
  writer = MetricWriter(workdir, tensorboard=config.logging.tensorboard, enabled=is_main)
  data_iter = iter(task.train_data)
  with jax.set_mesh(mesh):
    state, frozen = layout.create(rng_for(config.seed, "init"), with_state=not resuming)
  if not resuming:
    start = 0
    writer.truncate_after(0)  # A fresh run replaces the metrics of any run that left no checkpoint.
  else:
    state, data_state = ckpt.restore(start, layout.abstract)
    data_iter.set_state(data_state)
    writer.truncate_after(start)
    print(f"Resumed from {ckpt.directory}/{start}", flush=True)

  train_step = build_train_step(config, layout, task.loss_fn, phase_losses=task.phase_losses,
                                experience=task.experience,
                                statistics_update=task.statistics_update)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state_shardings = jax.tree.map(lambda x: x.sharding, layout.abstract)
    train_step = jax.jit(train_step, donate_argnums=0, out_shardings=(state_shardings, None))
    eval_step = jax.jit(make_eval_step(task.loss_fn))
  train_rng, eval_rng = rng_for(config.seed, "train"), rng_for(config.seed, "eval")
  rollout_rng = rng_for(config.seed, "rollout")
  num_steps = config.train.num_steps
  bar = ProgressBar(num_steps, start, task.throughput_unit,
                    enabled=is_main and config.logging.progress_bar)
  log = _StepLog(writer, bar, first_step=start + 1, unit=task.throughput_unit,
                 units_per_step=config.train.batch_size * task.units_per_example,
                 last=latest_metrics(workdir) if resuming else {},
                 progress_metric=task.progress_metric)

  def save(step: int) -> None:
    if ckpt.latest_step() != step:
      log.flush(step)  # Never checkpoint a state whose metrics are unchecked.
      ckpt.save(step, state, data_iter.get_state())

  step = start
  budget = _CpuBudget(config.train.time_budget_s)
  try:
    with _Preemption() as preemption, jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      while step < num_steps:
        batch = next(data_iter)
        if task.rollout is not None:  # On-policy: this step's responses, from the current params.
          batch = task.rollout(partition.merge_params(state.params, frozen), batch,
                               jax.random.fold_in(rollout_rng, step))
        batch = parallel.shard_batch(batch, mesh)
        state, metrics = train_step(state, frozen, batch, train_rng)
        step += 1
        log.add(step, metrics)
        out_of_budget = budget.spent()
        last = step == num_steps or out_of_budget
        if step % config.train.log_every == 0 or step == start + 1 or last:
          log.flush(step)
        if step % config.train.eval_every == 0 or last:
          log.flush(step)
          params = partition.merge_params(state.eval_params(), frozen)
          eval_metrics = evaluate(task, eval_step, params, mesh, eval_rng)
          if task.on_eval is not None and is_main:
            eval_metrics.update(task.on_eval(params, step))
          log.write_eval(step, eval_metrics)
        if step % config.checkpoint.every_steps == 0 or last:
          save(step)
        if out_of_budget:
          bar.write(f"train.time_budget_s: {budget.seconds:g} CPU seconds used by step {step}; "
                    "stopped there.")
          break
        if preemption.requested:
          save(step)
          bar.write(f"SIGTERM: saved a checkpoint at step {step}; exiting.")
          break
  finally:
    bar.close()
    ckpt.wait()
    ckpt.close()
    writer.close()
  return log.last
