"""VAE objective: the KL term against its closed form and a Monte Carlo estimate; the likelihood."""
import jax
import jax.numpy as jnp
import numpy as np

from gen_jax import objectives


def test_kl_equals_closed_form_and_monte_carlo():
  r = np.random.default_rng(0)
  mean = r.normal(size=(3, 5))
  log_var = r.normal(size=(3, 5)) * 0.5
  kl = np.asarray(objectives.gaussian_kl_to_standard_normal(jnp.asarray(mean), jnp.asarray(log_var)))
  var = np.exp(log_var)
  closed = 0.5 * (var + mean**2 - 1 - log_var).sum(-1)
  np.testing.assert_allclose(kl, closed, rtol=1e-5)
  # Monte Carlo: E_q[log q(z) - log p(z)].
  z = mean[None] + np.sqrt(var)[None] * r.normal(size=(200_000, 3, 5))
  log_q = -0.5 * (((z - mean) ** 2) / var + np.log(2 * np.pi * var)).sum(-1)
  log_p = -0.5 * (z**2 + np.log(2 * np.pi)).sum(-1)
  np.testing.assert_allclose(kl, (log_q - log_p).mean(0), rtol=0.02, atol=0.01)


def test_discretized_logistic_is_a_distribution_over_the_levels():
  levels = 17
  grid = np.linspace(-1, 1, levels)
  for mean, log_scale in [(0.0, -2.0), (0.9, -4.0), (-1.0, 0.5), (0.3, -6.5)]:
    lp = objectives.discretized_logistic_log_prob(jnp.asarray(grid), jnp.full(levels, mean),
                                                  jnp.full(levels, log_scale), levels)
    np.testing.assert_allclose(np.exp(np.asarray(lp)).sum(), 1.0, rtol=1e-4)


def test_discretized_logistic_matches_cdf_differences():
  levels, mean, scale = 5, 0.1, 0.3
  cdf = lambda x: 1 / (1 + np.exp(-(x - mean) / scale))  # noqa: E731
  half = 1 / (levels - 1)
  grid = np.linspace(-1, 1, levels)
  expected = [cdf(-1 + half)] + [cdf(x + half) - cdf(x - half) for x in grid[1:-1]] + [1 - cdf(1 - half)]
  lp = objectives.discretized_logistic_log_prob(jnp.asarray(grid), jnp.full(levels, mean),
                                                jnp.full(levels, np.log(scale)), levels)
  np.testing.assert_allclose(np.exp(np.asarray(lp)), expected, rtol=1e-5)


def test_negative_elbo_is_reconstruction_plus_kl():
  r = np.random.default_rng(1)
  images = jnp.asarray(np.linspace(-1, 1, 17)[r.integers(0, 17, (2, 4, 4, 1))])
  decoded = (jnp.zeros((2, 4, 4, 1)), jnp.full((2, 4, 4, 1), -1.0))
  posterior = (jnp.asarray(r.normal(size=(2, 3))), jnp.zeros((2, 3)))
  terms = objectives.negative_elbo(images, decoded, posterior, 17, kl_weight=0.5)
  np.testing.assert_allclose(terms["negative_elbo"], terms["reconstruction"] + terms["kl"], rtol=1e-6)
  np.testing.assert_allclose(terms["loss"], terms["reconstruction"] + 0.5 * terms["kl"], rtol=1e-6)
  assert jax.numpy.all(terms["reconstruction"] > 0)
