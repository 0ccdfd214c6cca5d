"""The diffusion samplers with the exact denoiser of Gaussian data, where everything is closed form.

For data x0 ~ N(mu, s^2) per pixel, x_t = a x0 + sigma eps is Gaussian too, so
  E[x0 | x_t] = mu + a s^2 (x_t - a mu) / (a^2 s^2 + sigma^2),
  E[eps | x_t] = sigma (x_t - a mu) / (a^2 s^2 + sigma^2),
and the probability-flow ODE keeps the standardized value (x_t - a mu) / sqrt(a^2 s^2 + sigma^2)
fixed: from x_T it ends at mu + s (x_T - a_T mu) / sqrt(a_T^2 s^2 + sigma_T^2). DDIM (eta 0) and
DPM-Solver++ solve that ODE; DDPM and DDIM with eta > 0 sample N(mu, s^2).
"""
import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.objectives import diffusion
from gen_jax.sampling import diffusion as samplers

MU, STD = 0.3, 0.5
SHAPE = (512, 2, 2, 1)


def gaussian_denoiser(schedule, objective):
  """model_fn(x, t) -> the exact prediction of Gaussian data in `objective`."""
  alphas_cumprod = jnp.asarray(schedule.alphas_cumprod, jnp.float32)

  def model_fn(x, t):
    abar = alphas_cumprod[t.astype(jnp.int32)].reshape(-1, 1, 1, 1)
    alpha, sigma = jnp.sqrt(abar), jnp.sqrt(1 - abar)
    variance = alpha**2 * STD**2 + sigma**2
    x0 = MU + alpha * STD**2 / variance * (x - alpha * MU)
    eps = sigma / variance * (x - alpha * MU)
    return diffusion.from_x0_and_eps(x0, eps, alpha, sigma, objective)
  return model_fn


def ode_end(schedule, x_T):
  """The probability-flow ODE's exact end point from x_T at t = T-1."""
  abar = schedule.alphas_cumprod[-1]
  return MU + STD * (x_T - np.sqrt(abar) * MU) / np.sqrt(abar * STD**2 + 1 - abar)


def test_guidance_scale_one_is_the_conditional_model_and_otherwise_one_batched_call():
  calls = []

  def apply_fn(x, t, labels):
    calls.append(x.shape[0])
    return x * (1.0 + labels[:, None, None, None]) + 0.01 * t[:, None, None, None]

  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, 2, 1)), jnp.float32)
  t = jnp.array([5.0, 6.0, 7.0])
  labels, null = jnp.array([0, 1, 2]), jnp.full((3,), 5)
  cond, uncond = apply_fn(x, t, labels), apply_fn(x, t, null)
  calls.clear()
  unguided = samplers.classifier_free_guidance(apply_fn, labels, null, 1.0)(x, t)
  np.testing.assert_array_equal(unguided, cond)
  assert calls == [3]
  calls.clear()
  guided = samplers.classifier_free_guidance(apply_fn, labels, null, 3.0)(x, t)
  assert calls == [6]  # [cond; uncond] in one call.
  np.testing.assert_allclose(guided, uncond + 3.0 * (cond - uncond), rtol=1e-6, atol=1e-6)


def test_deterministic_samplers_follow_the_probability_flow_ode():
  schedule = diffusion.make_schedule("cosine", 1000)
  x_T = jax.random.normal(jax.random.key(0), SHAPE)
  exact = ode_end(schedule, np.asarray(x_T))
  # (sampler, objective, num_steps): each parameterization of the same denoiser goes through the
  # samplers' conversions, so a wrong one shows as a large error.
  runs = [("ddim", "epsilon", 20), ("ddim", "x0", 80), ("dpm_solver", "v", 20),
          ("dpm_solver", "x0", 40), ("dpm_solver", "epsilon", 20)]

  @jax.jit  # One program for all runs: compiling each apart costs more than running them.
  def run_all(rng):
    out = []
    for sampler, objective, num_steps in runs:
      model_fn = gaussian_denoiser(schedule, objective)
      fn = samplers.ddim_sample if sampler == "ddim" else samplers.dpm_solver_sample
      out.append(fn(model_fn, schedule, objective, rng, SHAPE, num_steps, noise=x_T))
    return out

  first, second = run_all(jax.random.key(1)), run_all(jax.random.key(2))
  for a, b in zip(first, second):  # No noise after x_T: another rng gives the same samples.
    np.testing.assert_array_equal(a, b)
  ddim_20, ddim_80, dpm_20, dpm_40, dpm_eps_20 = (float(np.abs(x - exact).max()) for x in first)
  # DDIM is first order (4x the steps, about 1/4 the error); DPM-Solver++(2M) is second order,
  # an order of magnitude closer at 20 steps.
  assert 0.1 < ddim_20 < 0.2 and ddim_80 < 0.05 and 3 < ddim_20 / ddim_80 < 5, (ddim_20, ddim_80)
  assert dpm_20 < 0.1 * ddim_20 and dpm_40 < 0.005, (dpm_20, dpm_40)
  np.testing.assert_allclose(first[4], first[2], atol=2e-3)  # epsilon and v: the same images.


def test_ddim_inversion_then_sampling_returns_to_the_start():
  # The linear schedule: the cosine one ends at abar ~ 1e-9, where the last inverted step is so
  # insensitive to x_T that fixed-point refinement barely contracts.
  schedule = diffusion.make_schedule("linear", 1000)
  model_fn = gaussian_denoiser(schedule, "epsilon")
  x0 = MU + STD * jax.random.normal(jax.random.key(3), SHAPE)
  abar = schedule.alphas_cumprod[-1]
  exact_noise = np.sqrt(abar) * MU + np.sqrt(abar * STD**2 + 1 - abar) * (np.asarray(x0) - MU) / STD

  @jax.jit
  def round_trips(x0):
    out = []
    for iterations in (0, 6):
      x_T = samplers.ddim_invert(model_fn, schedule, "epsilon", x0, 50,
                                 fixed_point_iterations=iterations)
      out.append((x_T, samplers.ddim_sample(model_fn, schedule, "epsilon", jax.random.key(0),
                                            SHAPE, 50, noise=x_T)))
    return out

  (x_T, back), (_, refined) = round_trips(x0)
  # The plain inversion follows the ODE forward (to first order) and comes back near x0.
  assert np.abs(np.asarray(x_T) - exact_noise).max() < 0.1
  assert np.abs(np.asarray(back - x0)).max() < 0.15
  # Fixed-point refinement inverts the sampler's own steps: back at x0 up to float error.
  np.testing.assert_allclose(refined, x0, atol=1e-4)


def ddpm_output_moments(schedule):
  """Mean and variance of DDPM's output with the Gaussian denoiser, by propagating them through
  its linear steps x_{t-1} = A x_t + B + std z (numpy, float64), from x_{T-1} ~ N(0, 1).

  The posterior q(x_{t-1} | x_t, x0) is written as the product of q(x_t | x_{t-1}) and
  q(x_{t-1} | x0): its precision alpha_t / beta_t + 1 / (1 - abar_{t-1}) and the
  precision-weighted mean, not the paper's coefficients the sampler uses.
  """
  abar, betas = schedule.alphas_cumprod, schedule.betas
  mean, variance = 0.0, 1.0
  for t in range(schedule.num_timesteps - 1, -1, -1):
    a, sigma2 = np.sqrt(abar[t]), 1 - abar[t]
    gain = a * STD**2 / (a**2 * STD**2 + sigma2)  # x0_hat = MU + gain (x_t - a MU)
    x0_slope, x0_offset = gain, MU - gain * a * MU
    if t == 0:  # The last step returns x0_hat.
      return x0_slope * mean + x0_offset, x0_slope**2 * variance
    alpha = 1 - betas[t]
    precision = alpha / betas[t] + 1 / (1 - abar[t - 1])
    w_x0 = np.sqrt(abar[t - 1]) / (1 - abar[t - 1]) / precision
    slope = np.sqrt(alpha) / betas[t] / precision + w_x0 * x0_slope
    mean = slope * mean + w_x0 * x0_offset
    variance = slope**2 * variance + 1 / precision


def test_stochastic_samplers_sample_the_data_distribution():
  schedule = diffusion.make_schedule("cosine", 100)
  model_fn = gaussian_denoiser(schedule, "v")
  shape = (4096, 2, 2, 1)

  @jax.jit
  def ddpm_and_ddim(rng):
    return (samplers.ddpm_sample(model_fn, schedule, "v", rng, shape),
            samplers.ddim_sample(model_fn, schedule, "v", rng, shape, 100, eta=1.0))

  a, ddim = (np.asarray(x) for x in ddpm_and_ddim(jax.random.key(0)))
  np.testing.assert_array_equal(ddpm_and_ddim(jax.random.key(0))[0], a)  # Deterministic.
  assert not np.array_equal(ddpm_and_ddim(jax.random.key(1))[0], a)
  mean, variance = ddpm_output_moments(schedule)
  # 100 steps sample the data's N(0.3, 0.5^2) a little narrow (T = 1000 gets 0.498) ...
  assert abs(mean - MU) < 1e-3 and 0.47 < np.sqrt(variance) < 0.49, (mean, np.sqrt(variance))
  # ... and the sampler draws exactly that: 16384 draws, 5 standard errors.
  n = a.size
  assert abs(a.mean() - mean) < 5 * np.sqrt(variance / n), (a.mean(), mean)
  assert abs(a.std() - np.sqrt(variance)) < 5 * np.sqrt(variance / (2 * n)), (a.std(), variance)
  # DDIM with eta = 1 over every step is DDPM: the same posterior, mean and variance, written
  # the other way (Song et al., 2021, eq. 16), and the same noise from the same rng.
  np.testing.assert_allclose(ddim, a, atol=1e-4)
