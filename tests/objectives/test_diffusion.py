"""Diffusion maths against independent references: schedule closed forms, q(x_t | x_0)'s moments,
the posterior as a product of Gaussians, the parameterizations' conversions and the loss."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax.objectives import diffusion


def test_schedules_match_their_closed_forms():
  linear = diffusion.make_schedule("linear", 1000)
  np.testing.assert_allclose(linear.betas[[0, -1]], [1e-4, 0.02], rtol=1e-12)
  np.testing.assert_allclose(linear.alphas_cumprod,
                             np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-12)
  assert diffusion.make_schedule("linear", 100).betas[-1] == pytest.approx(0.2)  # x 1000 / T.

  cosine = diffusion.make_schedule("cosine", 100)
  f = lambda t: math.cos((t / 100 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
  # Nichol & Dhariwal eq. 17: abar_t = f(t) / f(0), with step t 1-based there (0-based here).
  expected = np.array([f(t + 1) / f(0) for t in range(99)])
  np.testing.assert_allclose(cosine.alphas_cumprod[:99], expected, rtol=1e-9)
  assert cosine.betas[-1] == 0.999 and cosine.alphas_cumprod[-1] < 1e-6  # The clipped last beta.
  assert cosine.alphas_cumprod_prev[0] == 1.0
  np.testing.assert_array_equal(cosine.alphas_cumprod_prev[1:], cosine.alphas_cumprod[:-1])
  with pytest.raises(ValueError, match="unknown schedule 'quadratic'"):
    diffusion.make_schedule("quadratic", 10)


def test_q_sample_moments_match_the_closed_form():
  schedule = diffusion.make_schedule("cosine", 100)
  n = 20000
  t = jnp.array([5, 50, 90], jnp.int32)
  x0 = jnp.array([0.7, -0.4, 1.0]).reshape(3, 1, 1, 1)
  noise = jax.random.normal(jax.random.key(0), (3, n, 1, 1))
  x_t = np.asarray(diffusion.q_sample(schedule, jnp.broadcast_to(x0, (3, n, 1, 1)), t, noise))
  abar = schedule.alphas_cumprod[np.asarray(t)]
  mean, std = np.sqrt(abar) * np.asarray(x0).ravel(), np.sqrt(1 - abar)
  # 5 standard errors of the sample mean and the sample standard deviation.
  np.testing.assert_allclose(x_t.reshape(3, n).mean(1), mean, atol=5 * std.max() / math.sqrt(n))
  np.testing.assert_allclose(x_t.reshape(3, n).std(1), std, rtol=5 / math.sqrt(2 * n))


def test_posterior_mean_and_variance_equal_the_product_of_gaussians():
  schedule = diffusion.make_schedule("linear", 50)
  t = np.array([0, 1, 17, 49])
  rng = np.random.default_rng(0)
  x0, x_t = rng.normal(size=(4, 2, 2, 1)), rng.normal(size=(4, 2, 2, 1))
  mean, variance = diffusion.q_posterior_mean_variance(
      schedule, jnp.asarray(x0, jnp.float32), jnp.asarray(x_t, jnp.float32), jnp.asarray(t))
  # q(x_{t-1} | x_t, x0) is proportional to q(x_t | x_{t-1}) q(x_{t-1} | x0): a product of two
  # Gaussian densities in x_{t-1}, whose precisions and precision-weighted means add.
  abar, beta = schedule.alphas_cumprod, schedule.betas
  for i, step in enumerate(t):
    if step == 0:  # The previous "step" is x0 itself.
      np.testing.assert_allclose(mean[i], x0[i], atol=1e-6)
      assert float(variance[i].squeeze()) == 0.0
      continue
    alpha = 1 - beta[step]
    precision = alpha / beta[step] + 1 / (1 - abar[step - 1])
    expected_mean = (np.sqrt(alpha) * x_t[i] / beta[step] +
                     np.sqrt(abar[step - 1]) * x0[i] / (1 - abar[step - 1])) / precision
    np.testing.assert_allclose(mean[i], expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(variance[i].squeeze()), 1 / precision, rtol=1e-5)
  assert variance.shape == (4, 1, 1, 1)


def test_parameterizations_convert_consistently_and_the_loss_is_each_target_mse():
  rng = np.random.default_rng(1)
  x0 = jnp.asarray(rng.uniform(-1, 1, size=(3, 4, 4, 1)), jnp.float32)
  eps = jnp.asarray(rng.normal(size=(3, 4, 4, 1)), jnp.float32)
  abar = jnp.array([0.9, 0.5, 0.02]).reshape(3, 1, 1, 1)
  alpha, sigma = jnp.sqrt(abar), jnp.sqrt(1 - abar)
  x_t = alpha * x0 + sigma * eps
  v = alpha * eps - sigma * x0  # Salimans & Ho's definition.
  targets = {"epsilon": eps, "x0": x0, "v": v}
  for objective in diffusion.OBJECTIVES:
    target = diffusion.from_x0_and_eps(x0, eps, alpha, sigma, objective)
    np.testing.assert_allclose(target, targets[objective], atol=1e-6)
    back_x0, back_eps = diffusion.to_x0_and_eps(target, x_t, alpha, sigma, objective)
    np.testing.assert_allclose(back_x0, x0, atol=2e-5)
    np.testing.assert_allclose(back_eps, eps, atol=2e-5)
    exact = diffusion.diffusion_loss(target, x0, eps, alpha, sigma, objective)
    for name in ("loss", "mse_epsilon", "mse_v", "mse_x0"):
      np.testing.assert_allclose(exact[name], 0.0, atol=1e-9)
  # An epsilon prediction off by delta: x0_hat = x0 - sigma delta / alpha (clipped to [-1, 1]
  # for the metrics), and v_hat - v = alpha delta - sigma (x0_hat - x0).
  delta = 0.1
  terms = diffusion.diffusion_loss(eps + delta, x0, eps, alpha, sigma, "epsilon")
  np.testing.assert_allclose(terms["loss"], delta**2, rtol=1e-4)
  np.testing.assert_allclose(terms["mse_epsilon"], delta**2, rtol=1e-4)
  x0_error = np.clip(np.asarray(x0 - sigma * delta / alpha), -1, 1) - np.asarray(x0)
  assert np.abs(x0_error).max() > 0.5 and np.abs(x0_error).max() <= 2  # abar 0.02 clips.
  np.testing.assert_allclose(terms["mse_x0"], (x0_error**2).reshape(3, -1).mean(1), rtol=1e-4)
  v_error = np.asarray(alpha) * delta - np.asarray(sigma) * x0_error
  np.testing.assert_allclose(terms["mse_v"], (v_error**2).reshape(3, -1).mean(1), rtol=1e-4)
  v_terms = diffusion.diffusion_loss(v + delta, x0, eps, alpha, sigma, "v")
  np.testing.assert_allclose(v_terms["loss"], delta**2, rtol=1e-4)
  # v off by delta: eps_hat - eps = alpha delta.
  np.testing.assert_allclose(v_terms["mse_epsilon"], abar.ravel() * delta**2, rtol=1e-4)
  t = diffusion.sample_timesteps(jax.random.key(0), 4000, 10)
  assert t.dtype == jnp.int32 and int(t.min()) == 0 and int(t.max()) == 9
