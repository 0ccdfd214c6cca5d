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
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  target_log_probs = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return -(target_log_probs * weights).sum(), weights.sum()
