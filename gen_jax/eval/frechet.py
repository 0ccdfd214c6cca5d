"""The Fréchet distance between Gaussians fitted to features (Heusel et al. 2017, "GANs trained by
a two time-scale update rule converge to a local Nash equilibrium"), the quantity behind FID.

  FD = ||m1 - m2||^2 + Tr(C1 + C2 - 2 (C1 C2)^{1/2})

Tr((C1 C2)^{1/2}) is computed as Tr((C1^{1/2} C2 C1^{1/2})^{1/2}): C1 C2 is similar to the
symmetric positive semi-definite C1^{1/2} C2 C1^{1/2}, so both have the same (real, non-negative)
eigenvalues, and two symmetric eigen-decompositions give them without the complex round-off and
the epsilon-on-the-diagonal fallback that scipy.linalg.sqrtm of the non-symmetric product needs
when a covariance is singular (fewer samples than feature dimensions). Everything runs in float64
on the host: FID differences between models are often in the third significant digit.
"""
import numpy as np


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """(mean [d], covariance [d, d]) of features [n, d], float64; the covariance is the unbiased
  one (divided by n - 1), as numpy.cov(features, rowvar=False)."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2:
    raise ValueError(f"features must be [n, d], got shape {features.shape}")
  if features.shape[0] < 2:
    raise ValueError(f"a covariance needs at least 2 feature vectors, got {features.shape[0]}")
  if not np.isfinite(features).all():
    raise ValueError("features contain NaN or inf")
  mean = features.mean(axis=0)
  centered = features - mean
  covariance = centered.T @ centered / (features.shape[0] - 1)
  return mean, covariance


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix [d, d]; round-off negatives are clipped."""
  eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def trace_sqrt_product(cov1, cov2) -> float:
  """Tr((C1 C2)^{1/2}) for symmetric PSD C1, C2 [d, d]."""
  sqrt1 = _psd_sqrt(np.asarray(cov1, np.float64))
  middle = sqrt1 @ np.asarray(cov2, np.float64) @ sqrt1
  eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
  return float(np.sqrt(np.clip(eigenvalues, 0, None)).sum())


def frechet_distance(mean1, cov1, mean2, cov2) -> float:
  """Fréchet (2-Wasserstein squared) distance between N(mean1 [d], cov1 [d, d]) and
  N(mean2 [d], cov2 [d, d])."""
  mean1, mean2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  d = mean1.shape[0] if mean1.ndim == 1 else -1
  for name, value, shape in (("mean1", mean1, (d,)), ("mean2", mean2, (d,)),
                             ("cov1", cov1, (d, d)), ("cov2", cov2, (d, d))):
    if value.shape != shape:
      raise ValueError(f"{name}: shape {value.shape}, expected {shape} (means [d], "
                       f"covariances [d, d], d from mean1 {mean1.shape})")
    if not np.isfinite(value).all():
      raise ValueError(f"{name}: contains NaN or inf")
  difference = mean1 - mean2
  distance = (difference @ difference + np.trace(cov1) + np.trace(cov2)
              - 2 * trace_sqrt_product(cov1, cov2))
  # Round-off can take an exact zero slightly negative; a distance is never below 0.
  return max(float(distance), 0.0)


def frechet_distance_of_features(features_a, features_b) -> float:
  """Fréchet distance between Gaussians fitted to features_a [n, d] and features_b [m, d]."""
  return frechet_distance(*gaussian_statistics(features_a), *gaussian_statistics(features_b))
