"""Next-token cross-entropy for causal language models."""
import jax
import jax.numpy as jnp


def packed_targets(tokens: jax.Array, segment_ids: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Splits a packed [b, t+1] window into inputs, targets and target weights.

  A target counts only if it belongs to the same document as its input token: the first token of a
  document is never predicted from the previous document, and padding (segment 0) never counts.

  Returns:
    inputs [b, t], targets [b, t], weights [b, t] float32 in {0, 1}.
  """
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  same_doc = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)
  return inputs, targets, same_doc.astype(jnp.float32)


def token_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """log p(target) for every position.

  Args:
    logits: [b, t, v] float.
    targets: [b, t] int.
  Returns:
    [b, t] float32 in nats. The softmax runs in float32 because bfloat16 logits lose the small
    differences between large log-probs that policy ratios and KL estimates are made of.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def sequence_log_probs(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
  """log p(sequence) summed over counted tokens: what DPO and reward models compare.

  Args:
    logits: [b, t, v] float.
    targets: [b, t] int.
    mask: [b, t] float in {0, 1}, 1 for the tokens that belong to the scored span (the response).
  Returns:
    [b] float32 in nats.
  """
  return (token_log_probs(logits, targets) * mask.astype(jnp.float32)).sum(axis=-1)


def next_token_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
  """Summed token cross-entropy and the number of counted tokens.

  Args:
    logits: [b, t, v] float.
    targets: [b, t] int.
    weights: [b, t] float, 0 for tokens that do not count.
  Returns:
    (sum of -log p(target) over counted tokens in nats, sum of weights). The mean is their ratio;
    returning both lets gradient accumulation and multi-device reduction weight tokens exactly.
  """
  return -(token_log_probs(logits, targets) * weights).sum(), weights.sum()
