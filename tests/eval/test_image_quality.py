"""The sample metrics' glue: batching returns what one call would, accuracy is a hand count, and
the ceiling reference has the training set's per-pixel moments."""
import numpy as np
import pytest

from gen_jax.eval import frechet, image_quality


def test_scores_batch_like_one_call_and_accuracy_counts_by_hand():
  rng = np.random.default_rng(0)
  projection = rng.normal(size=(12, 5))
  features_fn = lambda x: x.reshape(len(x), -1) @ projection  # noqa: E731
  logits_fn = lambda x: x.reshape(len(x), -1)[:, :3]  # noqa: E731
  images = rng.uniform(-1, 1, (23, 2, 2, 3)).astype(np.float32)
  scores = image_quality.score_images(features_fn, logits_fn, images, batch_size=10)
  np.testing.assert_allclose(scores.features, features_fn(images), rtol=1e-6)
  np.testing.assert_allclose(scores.logits, logits_fn(images), rtol=1e-6)
  logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.3, 0.2], [0.0, 5.0]])
  assert image_quality.class_accuracy(logits, np.array([1, 0, 1, 0])) == 0.5
  with pytest.raises(ValueError, match="labels: 3 for 4 images"):
    image_quality.class_accuracy(logits, np.array([1, 0, 1]))
  # Identical feature sets are at distance 0; a shift by d of every feature adds |d|^2.
  assert frechet.frechet_distance_of_features(scores.features, scores.features) < 1e-6
  shifted = frechet.frechet_distance_of_features(scores.features, scores.features + 2.0)
  np.testing.assert_allclose(shifted, 4.0 * 5, rtol=1e-6)


def test_the_ceiling_has_the_training_sets_per_pixel_moments():
  rng = np.random.default_rng(1)
  train = np.clip(rng.normal(0.2, 0.1, (500, 4, 4, 1)) * np.linspace(0.5, 1.5, 16).reshape(
      1, 4, 4, 1), -1, 1).astype(np.float32)
  fake = image_quality.mean_and_noise_images(train, 20000)
  np.testing.assert_allclose(fake.mean(0), train.mean(0), atol=0.01)
  np.testing.assert_allclose(fake.std(0), train.std(0), rtol=0.05)
