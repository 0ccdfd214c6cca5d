"""The pure, jitted training step: gradient accumulation, clipping and an optimizer update."""
import jax
import jax.numpy as jnp
import optax

from gen_jax.partition import merge_params
from gen_jax.train.state import TrainState
from gen_jax.train.task import WEIGHT, LossFn


def _split_microbatches(batch, num_micro: int):
  """[B, ...] -> [num_micro, B / num_micro, ...], interleaved so each device keeps its rows."""
  def split(x):
    x = x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:])  # [B/m, m, ...]
    return jnp.swapaxes(x, 0, 1)  # [m, B/m, ...]
  return jax.tree.map(split, batch)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    grad_accum_steps: int):
  """Builds train_step(state, frozen, batch, rng) -> (state, metrics).

  `state.params` are the trainable parameters and `frozen` the rest (`gen_jax.partition`;
  {} when all train): the loss sees them merged, the gradient and the update cover state.params
  only.

  The loss and the gradient are weighted means over every counted unit (token, image) of the whole
  batch, however it is split into microbatches or over devices, so a step's loss is the same on one
  device or many and with or without accumulation. The rng is folded with the step number.
  """
  def trainable_loss(params, frozen, batch, rng):
    return loss_fn(merge_params(params, frozen), batch, rng)

  grad_fn = jax.value_and_grad(trainable_loss, has_aux=True)

  def train_step(state: TrainState, frozen, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    micro = _split_microbatches(batch, grad_accum_steps)

    def accumulate(carry, xs):
      micro_index, microbatch = xs
      (loss_sum, sums), grads = grad_fn(state.params, frozen, microbatch,
                                        jax.random.fold_in(rng, micro_index))
      return jax.tree.map(jnp.add, carry, (grads, loss_sum, sums)), None

    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(
        lambda: (state.params, *trainable_loss(state.params, frozen, first, rng))))
    (grad_sum, loss_sum, sums), _ = jax.lax.scan(
        accumulate, zeros, (jnp.arange(grad_accum_steps), micro))

    weight = jnp.maximum(sums.pop(WEIGHT), 1e-9)
    grads = jax.tree.map(lambda g: g / weight, grad_sum)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state)
    metrics = {"loss": loss_sum / weight, "grad_norm": optax.global_norm(grads),
               "learning_rate": schedule(state.step)}
    metrics.update({k: v / weight for k, v in sums.items()})
    return new_state, metrics

  return train_step


def make_eval_step(loss_fn: LossFn):
  """eval_step(params, batch, rng) -> {"loss_sum", "weight", other sums} for one batch."""
  def eval_step(params, batch, rng):
    loss_sum, sums = loss_fn(params, batch, rng)
    return {"loss_sum": loss_sum, **sums}
  return eval_step
