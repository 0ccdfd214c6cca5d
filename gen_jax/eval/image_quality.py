"""Sample-quality metrics from a trained classifier, honestly named: "FD-FMNIST" is the Fréchet
distance (the FID formula, Heusel et al., 2017) between the classifier's penultimate features of
generated and of real images, not FID (which needs Inception-v3's features: gen_jax.eval.inception);
"class accuracy" is the classifier's accuracy on class-conditional samples against the class
each was asked for.

  features_fn, logits_fn = load_classifier(workdir)  # gen_jax.families.classifier
  scores = score_images(features_fn, logits_fn, samples)
  fd = frechet_distance_of_features(real.features, scores.features)
  accuracy = class_accuracy(scores.logits, requested_labels)
"""
import dataclasses

import numpy as np

BATCH = 500  # Images per classifier call.


@dataclasses.dataclass(frozen=True)
class Scores:
  features: np.ndarray  # [n, feature_dim] float64.
  logits: np.ndarray  # [n, num_classes] float32.


def score_images(features_fn, logits_fn, images: np.ndarray, batch_size: int = BATCH) -> Scores:
  """The classifier's features and logits of images [n, H, W, C] in [-1, 1], in batches (the last
  padded to the batch size, so one compiled shape serves every call)."""
  images = np.asarray(images, np.float32)
  features, logits = [], []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    valid = len(chunk)
    if valid < batch_size and len(images) > batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - valid, *chunk.shape[1:]), np.float32)])
    features.append(np.asarray(features_fn(chunk), np.float64)[:valid])
    logits.append(np.asarray(logits_fn(chunk), np.float32)[:valid])
  return Scores(np.concatenate(features), np.concatenate(logits))


def class_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  """The fraction of images whose most likely class is their label; logits [n, k], labels [n]."""
  labels = np.asarray(labels)
  if logits.shape[0] != labels.shape[0]:
    raise ValueError(f"labels: {labels.shape[0]} for {logits.shape[0]} images")
  return float(np.mean(np.argmax(logits, axis=-1) == labels))


def mean_and_noise_images(train_images: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
  """The ceiling reference: `count` images of the training set's per-pixel mean plus Gaussian
  noise of its per-pixel standard deviation, clipped to [-1, 1] (what a generator that learned
  only first and second moments per pixel, independently, would draw)."""
  mean, std = train_images.mean(axis=0), train_images.std(axis=0)
  noise = np.random.default_rng(seed).standard_normal((count, *train_images.shape[1:]))
  return np.clip(mean + std * noise, -1.0, 1.0).astype(np.float32)
