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
  logits = logits.astype(jnp.float32)
  # logit[target] - logsumexp(logits), the target's logit picked by comparing with a vocabulary
  # iota rather than gathered: no [b, t, v] log-probabilities are written, and the gradient is
  # softmax - one_hot, elementwise, where a gather's would be a scatter into a zeroed [b, t, v]
  # (XLA:GPU's 1b train step: a 4 GiB zero fill and an 8 GiB scatter; benchmarks/aot_hlo.py).
  picked = jnp.arange(logits.shape[-1]) == targets[..., None]
  return jnp.sum(jnp.where(picked, logits, 0.0), axis=-1) - jax.nn.logsumexp(logits, axis=-1)


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


def chunked_logit_stats(hidden: jax.Array, logits_fn, targets: jax.Array, num_chunks: int,
                        stats_fn=token_log_probs):
  """`stats_fn(logits_fn(hidden), targets)` without all the logits at once.

  The [b, t, v] float32 logits (and their softmax and gradient) are often a training step's largest
  arrays: with a 32k vocabulary, 128 KB per token. Here the output layer and `stats_fn` run over
  `num_chunks` slices of the positions in turn, each slice's logits recomputed in the backward
  pass, so only [b, t / num_chunks, v] exist at a time; the result and its gradients are the
  same. Slice j holds positions j, j + num_chunks, j + 2 num_chunks, ...: spread over the whole
  length, so a length split over devices (sequence parallelism) splits every slice alike.

  Args:
    hidden: [b, t, d], what the output layer reads.
    logits_fn: [b, c, d] -> [b, c, v] logits (the output layer, its parameters closed over).
    targets: [b, t] int.
    num_chunks: slices, at least 1. One that does not divide t pads the positions to a
      multiple of it (at most num_chunks - 1 positions of zeros, computed and dropped).
    stats_fn: (logits [b, c, v], targets [b, c]) -> a pytree of per-position [b, c] arrays
      (default: token_log_probs; e.g. also the entropy, for RL).
  Returns:
    stats_fn's pytree with every leaf [b, t], in position order.
  """
  b, t = targets.shape
  if num_chunks < 1:
    raise ValueError(f"num_chunks={num_chunks} must be at least 1")
  padded = -(-t // num_chunks) * num_chunks

  def slices(x):  # [b, t, ...] -> [num_chunks, b, padded / num_chunks, ...]
    x = jnp.pad(x, [(0, 0), (0, padded - t)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(b, padded // num_chunks, num_chunks, *x.shape[2:]), 2, 0)

  @jax.checkpoint  # Keep nothing of a slice's logits for the backward pass: recompute them.
  def slice_stats(_, xs):
    hidden, targets = xs
    return None, stats_fn(logits_fn(hidden), targets)

  _, stats = jax.lax.scan(slice_stats, None, (slices(hidden), slices(targets)))
  # Back to position order, the padding dropped.
  return jax.tree.map(lambda x: jnp.moveaxis(x, 0, 2).reshape(b, padded)[:, :t], stats)


def chunked_token_log_probs(hidden: jax.Array, logits_fn, targets: jax.Array,
                            num_chunks: int) -> jax.Array:
  """[b, t] float32 `token_log_probs(logits_fn(hidden), targets)`, a slice of positions at a time
  (`chunked_logit_stats`)."""
  return chunked_logit_stats(hidden, logits_fn, targets, num_chunks)


def chunked_next_token_loss(hidden: jax.Array, logits_fn, targets: jax.Array, weights: jax.Array,
                            num_chunks: int) -> tuple[jax.Array, jax.Array]:
  """`next_token_loss(logits_fn(hidden), targets, weights)` a slice of positions at a time
  (`chunked_token_log_probs`). Returns (summed -log p(target) over counted tokens, sum of
  weights)."""
  log_probs = chunked_token_log_probs(hidden, logits_fn, targets, num_chunks)
  return -(log_probs * weights).sum(), weights.sum()
