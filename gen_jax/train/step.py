"""The pure, jitted training step: experience (on-policy stages), gradient accumulation, clipping,
optimizer updates over epochs and minibatches or in phases (one optimizer each), statistics-set
leaves and the weights' EMA."""
import jax
import jax.numpy as jnp
import optax

from gen_jax.partition import flatten, merge_params, split_params, unflatten
from gen_jax.train.state import TrainState
import dataclasses
from typing import Callable

from gen_jax.train.task import WEIGHT, ExperienceFn, LossFn, Path, StatisticsUpdateFn


@dataclasses.dataclass(frozen=True)
class Phase:
  """One optimizer's update within the step: `tx` updates the leaves `owns` selects from the
  gradient of `loss_fn` (gen_jax.train.OptimizerGroup)."""
  name: str
  loss_fn: LossFn
  owns: Callable[[Path], bool]
  tx: optax.GradientTransformation


def _split_microbatches(batch, num_micro: int):
  """[B, ...] -> [num_micro, B / num_micro, ...], interleaved so each device keeps its rows."""
  def split(x):
    x = x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:])  # [B/m, m, ...]
    return jnp.swapaxes(x, 0, 1)  # [m, B/m, ...]
  return jax.tree.map(split, batch)


def _accumulated_update(loss_fn: LossFn, tx: optax.GradientTransformation, grad_accum_steps: int):
  """update(params, opt_state, frozen, batch, rng) -> (params, opt_state, metrics): one optimizer
  update of `params` from the gradient of loss_fn (on params merged with `frozen`) over `batch`,
  accumulated over grad_accum_steps microbatches."""
  def trainable_loss(params, frozen, batch, rng):
    return loss_fn(merge_params(params, frozen), batch, rng)

  grad_fn = jax.value_and_grad(trainable_loss, has_aux=True)

  def update(params, opt_state, frozen, batch, rng):
    micro = _split_microbatches(batch, grad_accum_steps)

    def accumulate(carry, xs):
      micro_index, microbatch = xs
      (loss_sum, sums), grads = grad_fn(params, frozen, microbatch,
                                        jax.random.fold_in(rng, micro_index))
      return jax.tree.map(jnp.add, carry, (grads, loss_sum, sums)), None

    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(
        lambda: (params, *trainable_loss(params, frozen, first, rng))))
    if grad_accum_steps == 1:
      # XLA:CPU runs convolutions inside a loop, even a one-trip scan, several times slower.
      (grad_sum, loss_sum, sums), _ = accumulate(zeros, (jnp.zeros((), jnp.int32), first))
    else:
      (grad_sum, loss_sum, sums), _ = jax.lax.scan(
          accumulate, zeros, (jnp.arange(grad_accum_steps), micro))

    weight = jnp.maximum(sums.pop(WEIGHT), 1e-9)
    grads = jax.tree.map(lambda g: g / weight, grad_sum)
    updates, opt_state = tx.update(grads, opt_state, params)
    metrics = {"loss": loss_sum / weight, "grad_norm": optax.global_norm(grads),
               **{k: v / weight for k, v in sums.items()}}
    return optax.apply_updates(params, updates), opt_state, metrics
  return update


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """The EMA's decay at `step` (0-based): (1 + step) / (10 + step) capped at `decay`, so early
  averages are not dominated by the random init (the warmup of Tensorflow's ExponentialMovingAverage
  with num_updates)."""
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    grad_accum_steps: int, *, experience: ExperienceFn | None = None,
                    epochs: int = 1, minibatches: int = 1, phases: tuple[Phase, ...] = (),
                    ema_decay: float = 0.0,
                    statistics_update: StatisticsUpdateFn | None = None):
  """Builds train_step(state, frozen, batch, rng) -> (state, metrics).

  `state.params` are the trainable parameters and `frozen` the rest (`gen_jax.partition`; {} when
  all train): the loss sees them merged, the gradient and the update cover state.params only.

  An on-policy stage's `experience(params, state.extra, batch, rng) -> (batch, extra, metrics)`
  first turns the batch into experience under the current params (old log-probs, advantages);
  the step then makes `epochs` passes over it, each shuffled and split into `minibatches`
  optimizer updates (PPO's epochs and minibatches; 1 and 1 otherwise). Metrics average over the
  updates; the step counts one.

  `phases` (a GAN's discriminator and generator) replace loss_fn and tx: each phase in turn
  updates the leaves it owns with its own optimizer (state.opt_state[phase.name]).
  `statistics_update` sets leaves from batch statistics (a VQ-VAE's EMA codebook) after the
  updates. `ema_decay` > 0 keeps state.ema, an exponential moving average of state.params.

  The loss and the gradient of an update are weighted means over every counted unit (token,
  image) of its batch, however it is split into microbatches or over devices, so an update is the
  same on one device or many and with or without accumulation. The rng is folded with the step.
  """
  if phases and (experience is not None or epochs * minibatches != 1):
    raise ValueError("phases take one update each per step: experience, epochs_per_batch and "
                     "minibatches are for single-optimizer stages")
  update = _accumulated_update(loss_fn, tx, grad_accum_steps)
  phase_updates = [(p, _accumulated_update(p.loss_fn, p.tx, grad_accum_steps)) for p in phases]

  def epoch(carry, epoch_index, frozen, batch, rng):
    """One pass over the batch, shuffled, in `minibatches` updates."""
    params, opt_state = carry
    rng = jax.random.fold_in(rng, epoch_index)
    size = jax.tree.leaves(batch)[0].shape[0]
    order = jax.random.permutation(rng, size)
    split = jax.tree.map(
        lambda x: x[order].reshape((minibatches, size // minibatches) + x.shape[1:]), batch)

    def minibatch(carry, xs):
      index, rows = xs
      params, opt_state, metrics = update(*carry, frozen, rows, jax.random.fold_in(rng, index))
      return (params, opt_state), metrics

    return jax.lax.scan(minibatch, (params, opt_state), (jnp.arange(minibatches), split))

  def phased(params, opt_state, frozen, batch, rng):
    """Each phase updates its own leaves, on the params the phases before it left."""
    opt_state, metrics = dict(opt_state), {}
    for index, (phase, phase_update) in enumerate(phase_updates):
      mine, others = split_params(params, phase.owns)
      mine, opt_state[phase.name], phase_metrics = phase_update(
          mine, opt_state[phase.name], merge_params(others, frozen), batch,
          jax.random.fold_in(rng, index))
      params = merge_params(mine, others)
      metrics.update({f"{phase.name}/{k}": v for k, v in phase_metrics.items()})
    return params, opt_state, metrics

  def train_step(state: TrainState, frozen, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    extra, side_metrics = state.extra, {}
    if experience is not None:
      batch, extra, side_metrics = experience(
          merge_params(state.params, frozen), state.extra, batch, jax.random.fold_in(rng, 2**31 - 1))
    if statistics_update is not None:  # Under the step's starting params, as the loss sees them.
      assigned, statistics_metrics = statistics_update(
          merge_params(state.params, frozen), batch, jax.random.fold_in(rng, 2**31 - 2))
      side_metrics = {**side_metrics, **statistics_metrics}
    if phases:
      params, opt_state, metrics = phased(state.params, state.opt_state, frozen, batch, rng)
    elif epochs * minibatches == 1:
      params, opt_state, metrics = update(state.params, state.opt_state, frozen, batch, rng)
    else:
      (params, opt_state), metrics = jax.lax.scan(
          lambda carry, index: epoch(carry, index, frozen, batch, rng),
          (state.params, state.opt_state), jnp.arange(epochs))
      metrics = jax.tree.map(jnp.mean, metrics)  # [epochs, minibatches] -> their mean.
    if statistics_update is not None:
      flat = flatten(params)
      unknown = sorted("/".join(p) for p in assigned if p not in flat)
      if unknown:
        raise ValueError(f"statistics_update sets {unknown[:5]}, which are not trainable leaves")
      params = unflatten({**flat, **{p: v.astype(flat[p].dtype) for p, v in assigned.items()}})
    ema = state.ema
    if ema_decay > 0:
      decay = ema_decay_at(state.step, ema_decay)
      ema = jax.tree.map(lambda e, p: (decay * e + (1 - decay) * p).astype(e.dtype), ema, params)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, extra=extra,
                              ema=ema)
    # The schedule counts optimizer updates: epochs * minibatches of them per step.
    metrics["learning_rate"] = schedule(state.step * epochs * minibatches)
    return new_state, {**metrics, **side_metrics}

  return train_step


def make_eval_step(loss_fn: LossFn):
  """eval_step(params, batch, rng) -> {"loss_sum", "weight", other sums} for one batch."""
  def eval_step(params, batch, rng):
    loss_sum, sums = loss_fn(params, batch, rng)
    return {"loss_sum": loss_sum, **sums}
  return eval_step
