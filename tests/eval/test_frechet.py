"""Fréchet distance against closed forms for Gaussians and against a second method."""
import numpy as np
import pytest
import scipy.linalg

from gen_jax.eval import frechet


def _random_covariance(rng, d, rank=None):
  factor = rng.normal(size=(d, rank or d))
  return factor @ factor.T / d + (0 if rank else 0.1 * np.eye(d))


def _fd_by_eig_of_product(m1, c1, m2, c2):
  """Bures / Wasserstein-2: Tr((C1 C2)^{1/2}) from the eigenvalues of the non-symmetric C1 C2."""
  eigenvalues = np.linalg.eig(c1 @ c2)[0]
  trace_sqrt = np.sqrt(np.clip(eigenvalues.real, 0, None)).sum()
  return np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * trace_sqrt


def test_gaussian_statistics_match_numpy():
  features = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32) * 3 + 1
  mean, covariance = frechet.gaussian_statistics(features)
  assert mean.dtype == covariance.dtype == np.float64
  np.testing.assert_allclose(mean, features.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(covariance, np.cov(features.astype(np.float64), rowvar=False),
                             rtol=1e-10)
  with pytest.raises(ValueError, match="at least 2"):
    frechet.gaussian_statistics(features[:1])
  with pytest.raises(ValueError, match=r"\[n, d\]"):
    frechet.gaussian_statistics(features[0])


def test_frechet_distance_closed_forms():
  rng = np.random.default_rng(1)
  # (a) Diagonal covariances: FD = ||m1 - m2||^2 + sum (sqrt(s1) - sqrt(s2))^2.
  m1, m2 = rng.normal(size=5), rng.normal(size=5)
  s1, s2 = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
  expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
  assert frechet.frechet_distance(m1, np.diag(s1), m2, np.diag(s2)) == pytest.approx(
      expected, rel=1e-10)
  # A hand-computed 1-d case: (0 - 3)^2 + (sqrt(4) - sqrt(1))^2 = 10.
  assert frechet.frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(10, rel=1e-12)

  # (b) Commuting 2x2 covariances (shared eigenvectors, a rotation): eigenvalue-wise as (a).
  angle = 0.7
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  e1, e2 = np.array([2.0, 0.5]), np.array([0.3, 1.7])
  c1, c2 = rotation @ np.diag(e1) @ rotation.T, rotation @ np.diag(e2) @ rotation.T
  expected = np.sum((m1[:2] - m2[:2]) ** 2) + np.sum((np.sqrt(e1) - np.sqrt(e2)) ** 2)
  assert frechet.frechet_distance(m1[:2], c1, m2[:2], c2) == pytest.approx(expected, rel=1e-10)

  # General (non-commuting) covariances against eig of C1 C2 and against scipy's sqrtm.
  for d in (2, 7):
    c1, c2 = _random_covariance(rng, d), _random_covariance(rng, d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    distance = frechet.frechet_distance(m1, c1, m2, c2)
    assert distance == pytest.approx(_fd_by_eig_of_product(m1, c1, m2, c2), rel=1e-9)
    by_sqrtm = (np.sum((m1 - m2) ** 2) + np.trace(c1 + c2)
                - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2).real))
    assert distance == pytest.approx(by_sqrtm, rel=1e-9)
    # Symmetric, zero against itself.
    assert frechet.frechet_distance(m2, c2, m1, c1) == pytest.approx(distance, rel=1e-10)
    assert frechet.frechet_distance(m1, c1, m1, c1) == pytest.approx(0, abs=1e-9)

  # Singular covariances (rank 2 in 6-d, as with fewer samples than features): still finite and
  # equal to the eigenvalue route.
  c1, c2 = _random_covariance(rng, 6, rank=2), _random_covariance(rng, 6, rank=3)
  assert frechet.frechet_distance(np.zeros(6), c1, np.ones(6), c2) == pytest.approx(
      _fd_by_eig_of_product(np.zeros(6), c1, np.ones(6), c2), rel=1e-6)

  with pytest.raises(ValueError, match="cov2"):
    frechet.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))


def test_frechet_distance_of_features_from_samples():
  rng = np.random.default_rng(2)
  d, n = 4, 20_000
  m1, m2 = rng.normal(size=d), rng.normal(size=d)
  c1, c2 = _random_covariance(rng, d), _random_covariance(rng, d)
  a = rng.multivariate_normal(m1, c1, size=n)
  b = rng.multivariate_normal(m2, c2, size=n)
  analytic = _fd_by_eig_of_product(m1, c1, m2, c2)
  estimate = frechet.frechet_distance_of_features(a, b)
  # The plug-in estimate is off by O(1 / sqrt(n)) relative: 0.2% for this seed, 1% allowed.
  assert estimate == pytest.approx(analytic, rel=0.01)
  assert frechet.frechet_distance_of_features(b, a) == pytest.approx(estimate, rel=1e-10)
  assert frechet.frechet_distance_of_features(a, a) == pytest.approx(0, abs=1e-6)
  # Fewer samples than dimensions: singular covariances, still a finite non-negative number.
  few = frechet.frechet_distance_of_features(rng.normal(size=(5, 32)), rng.normal(size=(5, 32)))
  assert np.isfinite(few) and few > 0
