"""Next-token loss and the packed target mask against numpy."""
import jax.numpy as jnp
import numpy as np

from gen_jax import objectives
from tests import reference


def test_packed_targets_mask_document_boundaries_and_padding():
  tokens = jnp.array([[5, 6, 7, 8, 9, 0]])
  segment_ids = jnp.array([[1, 1, 1, 2, 2, 0]])
  inputs, targets, weights = objectives.packed_targets(tokens, segment_ids)
  np.testing.assert_array_equal(inputs, [[5, 6, 7, 8, 9]])
  np.testing.assert_array_equal(targets, [[6, 7, 8, 9, 0]])
  # 7->8 crosses into document 2; 9->pad is padding.
  np.testing.assert_array_equal(weights, [[1, 1, 0, 1, 0]])


def test_next_token_loss_equals_numpy():
  r = np.random.default_rng(0)
  logits = r.normal(size=(2, 5, 11)).astype(np.float32)
  targets = r.integers(0, 11, (2, 5))
  weights = (r.random((2, 5)) > 0.3).astype(np.float32)
  loss_sum, count = objectives.next_token_loss(jnp.asarray(logits), jnp.asarray(targets),
                                               jnp.asarray(weights))
  logp = reference.log_softmax(logits.astype(np.float64))
  expected = -(np.take_along_axis(logp, targets[..., None], -1)[..., 0] * weights).sum()
  np.testing.assert_allclose(float(loss_sum), expected, rtol=1e-5)
  assert float(count) == weights.sum()


def test_chunked_next_token_loss_equals_the_whole_loss_and_its_gradients():
  """Slices of the positions, each slice's logits recomputed in the backward pass: the loss and
  the gradients of the hidden states and of the output layer's weights are the whole loss's."""
  import jax
  import pytest
  r = np.random.default_rng(0)
  hidden = jnp.asarray(r.normal(size=(2, 12, 8)), jnp.float32)
  kernel = jnp.asarray(r.normal(size=(8, 50)), jnp.float32)
  targets = jnp.asarray(r.integers(0, 50, size=(2, 12)))
  weights = jnp.asarray(r.integers(0, 2, size=(2, 12)), jnp.float32)

  def whole(hidden, kernel):
    return objectives.next_token_loss(hidden @ kernel, targets, weights)

  def chunked(hidden, kernel, chunks):
    return objectives.chunked_next_token_loss(hidden, lambda h: h @ kernel, targets, weights,
                                              chunks)

  (want, want_weight), want_grads = jax.value_and_grad(whole, (0, 1), has_aux=True)(hidden, kernel)
  # 5 and 7 do not divide the 12 positions: the last slices are padded, the padding dropped.
  for chunks in (1, 3, 12, 5, 7):
    (got, got_weight), got_grads = jax.jit(jax.value_and_grad(chunked, (0, 1), has_aux=True),
                                           static_argnums=2)(hidden, kernel, chunks)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert float(got_weight) == float(want_weight)
    for g, w in zip(got_grads, want_grads):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="num_chunks=0 must be at least 1"):
    chunked(hidden, kernel, 0)


def test_chunked_logit_stats_returns_every_statistic_of_the_slices_in_position_order():
  """A stats_fn of several outputs (log p(target) and the entropy, as PPO and GRPO read them):
  each equals the whole logits' and its gradient flows through the slices."""
  import jax
  r = np.random.default_rng(1)
  hidden = jnp.asarray(r.normal(size=(2, 10, 8)), jnp.float32)
  kernel = jnp.asarray(r.normal(size=(8, 30)), jnp.float32)
  targets = jnp.asarray(r.integers(0, 30, size=(2, 10)))

  def stats(logits, targets):
    return {"log_p": objectives.token_log_probs(logits, targets),
            "entropy": objectives.token_entropy(logits)}

  want = stats(hidden @ kernel, targets)
  got = objectives.chunked_logit_stats(hidden, lambda h: h @ kernel, targets, 4, stats)
  for name in want:
    assert got[name].shape == (2, 10)
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
  def entropy_sum(kernel, chunks):
    return objectives.chunked_logit_stats(hidden, lambda h: h @ kernel, targets, chunks,
                                          stats)["entropy"].sum()
  np.testing.assert_allclose(jax.grad(entropy_sum)(kernel, 4),
                             jax.grad(lambda k: stats(hidden @ k, targets)["entropy"].sum())(kernel),
                             rtol=1e-4, atol=1e-6)


def test_chunked_next_token_loss_holds_a_slice_of_the_logits_at_a_time():
  """Compiled temporaries of loss + gradients shrink with the slices: 4,096 tokens x 4,096
  vocabulary, 64 MiB of float32 logits; measured 128 MiB whole, 34 MiB at 8 slices, 18 at 16."""
  import jax
  hidden = jax.ShapeDtypeStruct((4, 1024, 64), jnp.float32)
  kernel = jax.ShapeDtypeStruct((64, 4096), jnp.float32)
  targets = jnp.zeros((4, 1024), jnp.int32)
  weights = jnp.ones((4, 1024), jnp.float32)

  def temp_bytes(loss):
    grad = jax.jit(jax.grad(lambda h, k: loss(h, k)[0], (0, 1)))
    return grad.lower(hidden, kernel).compile().memory_analysis().temp_size_in_bytes

  whole = temp_bytes(lambda h, k: objectives.next_token_loss(h @ k, targets, weights))
  chunked = {n: temp_bytes(lambda h, k, n=n: objectives.chunked_next_token_loss(
      h, lambda x: x @ k, targets, weights, n)) for n in (8, 16)}
  assert whole >= 64 * 2**20 and chunked[8] * 3 < whole, (whole, chunked)
  assert chunked[16] < 0.6 * chunked[8], chunked
