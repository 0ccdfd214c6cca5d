"""The pure, jitted training step: experience (on-policy stages), gradient accumulation, clipping,
optimizer updates over epochs and minibatches."""
import jax
import jax.numpy as jnp
import optax

from gen_jax.partition import merge_params
from gen_jax.train.state import TrainState
from gen_jax.train.task import WEIGHT, ExperienceFn, LossFn


def _split_microbatches(batch, num_micro: int):
  """[B, ...] -> [num_micro, B / num_micro, ...], interleaved so each device keeps its rows."""
  def split(x):
    x = x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:])  # [B/m, m, ...]
    return jnp.swapaxes(x, 0, 1)  # [m, B/m, ...]
  return jax.tree.map(split, batch)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    grad_accum_steps: int, *, experience: ExperienceFn | None = None,
                    epochs: int = 1, minibatches: int = 1):
  """Builds train_step(state, frozen, batch, rng) -> (state, metrics).

  `state.params` are the trainable parameters and `frozen` the rest (`gen_jax.partition`; {} when
  all train): the loss sees them merged, the gradient and the update cover state.params only.

  An on-policy stage's `experience(params, state.extra, batch, rng) -> (batch, extra, metrics)`
  first turns the batch into experience under the current params (old log-probs, advantages);
  the step then makes `epochs` passes over it, each shuffled and split into `minibatches`
  optimizer updates (PPO's epochs and minibatches; 1 and 1 otherwise). Metrics average over the
  updates; the step counts one.

  The loss and the gradient of an update are weighted means over every counted unit (token,
  image) of its batch, however it is split into microbatches or over devices, so an update is the
  same on one device or many and with or without accumulation. The rng is folded with the step.
  """
  def trainable_loss(params, frozen, batch, rng):
    return loss_fn(merge_params(params, frozen), batch, rng)

  grad_fn = jax.value_and_grad(trainable_loss, has_aux=True)

  def update(params, opt_state, frozen, batch, rng):
    """One optimizer update from `batch`, accumulated over grad_accum_steps microbatches."""
    micro = _split_microbatches(batch, grad_accum_steps)

    def accumulate(carry, xs):
      micro_index, microbatch = xs
      (loss_sum, sums), grads = grad_fn(params, frozen, microbatch,
                                        jax.random.fold_in(rng, micro_index))
      return jax.tree.map(jnp.add, carry, (grads, loss_sum, sums)), None

    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(
        lambda: (params, *trainable_loss(params, frozen, first, rng))))
    (grad_sum, loss_sum, sums), _ = jax.lax.scan(
        accumulate, zeros, (jnp.arange(grad_accum_steps), micro))

    weight = jnp.maximum(sums.pop(WEIGHT), 1e-9)
    grads = jax.tree.map(lambda g: g / weight, grad_sum)
    updates, opt_state = tx.update(grads, opt_state, params)
    metrics = {"loss": loss_sum / weight, "grad_norm": optax.global_norm(grads),
               **{k: v / weight for k, v in sums.items()}}
    return optax.apply_updates(params, updates), opt_state, metrics

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

  def train_step(state: TrainState, frozen, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    extra, experience_metrics = state.extra, {}
    if experience is not None:
      batch, extra, experience_metrics = experience(
          merge_params(state.params, frozen), state.extra, batch, jax.random.fold_in(rng, 2**31 - 1))
    if epochs * minibatches == 1:
      params, opt_state, metrics = update(state.params, state.opt_state, frozen, batch, rng)
    else:
      (params, opt_state), metrics = jax.lax.scan(
          lambda carry, index: epoch(carry, index, frozen, batch, rng),
          (state.params, state.opt_state), jnp.arange(epochs))
      metrics = jax.tree.map(jnp.mean, metrics)  # [epochs, minibatches] -> their mean.
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, extra=extra)
    # The schedule counts optimizer updates: epochs * minibatches of them per step.
    metrics["learning_rate"] = schedule(state.step * epochs * minibatches)
    return new_state, {**metrics, **experience_metrics}

  return train_step


def make_eval_step(loss_fn: LossFn):
  """eval_step(params, batch, rng) -> {"loss_sum", "weight", other sums} for one batch."""
  def eval_step(params, batch, rng):
    loss_sum, sums = loss_fn(params, batch, rng)
    return {"loss_sum": loss_sum, **sums}
  return eval_step
