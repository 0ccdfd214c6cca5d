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
