"""Gaussian diffusion (Ho et al., 2020) with the cosine schedule (Nichol & Dhariwal, 2021) and the
epsilon, x0 and v parameterizations (v: Salimans & Ho, 2022).

The forward process q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I) with alpha_t = sqrt(abar_t) and
sigma_t = sqrt(1 - abar_t), abar_t the cumulative product of (1 - beta) up to step t (0-based,
t = 0 .. T-1). A model predicts one of:
  epsilon: the noise, x_t = alpha x_0 + sigma eps;
  x0:      the clean image;
  v:       alpha eps - sigma x_0, so x_0 = alpha x_t - sigma v and eps = sigma x_t + alpha v.
Everything here is a pure function of arrays; the schedule is computed once on the host.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "cosine")
OBJECTIVES = ("epsilon", "v", "x0")
_MAX_BETA = 0.999  # Nichol & Dhariwal's clip: the cosine schedule's last beta would be 1.


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  """A discrete noise schedule of T steps; host float64 arrays, each [T]."""
  betas: np.ndarray
  alphas_cumprod: np.ndarray  # abar_t = prod_{s <= t} (1 - beta_s).

  @property
  def num_timesteps(self) -> int:
    return len(self.betas)

  @property
  def alphas_cumprod_prev(self) -> np.ndarray:
    """abar_{t-1}, with abar_{-1} = 1 (the clean data): [T]."""
    return np.concatenate([[1.0], self.alphas_cumprod[:-1]])


def make_schedule(name: str, num_timesteps: int) -> Schedule:
  """The "linear" (Ho et al.) or "cosine" (Nichol & Dhariwal) schedule of `num_timesteps` steps.

  The linear betas run from 1e-4 to 0.02 at T = 1000 and are scaled by 1000 / T for other T
  (improved-diffusion's rule), so abar_{T-1} stays near 0 for any T.
  """
  if name == "linear":
    scale = 1000.0 / num_timesteps
    betas = np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
  elif name == "cosine":
    offset = 0.008  # s in Nichol & Dhariwal's f(t) = cos((t/T + s) / (1 + s) * pi / 2)^2.
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = np.minimum(1.0 - f[1:] / f[:-1], _MAX_BETA)
  else:
    raise ValueError(f"unknown schedule {name!r}; schedules are {SCHEDULES}")
  return Schedule(betas=betas, alphas_cumprod=np.cumprod(1.0 - betas))


def _per_example(values: np.ndarray, t: jax.Array, ndim: int) -> jax.Array:
  """values[t] for integer t [b], shaped [b, 1, ..., 1] to broadcast over an ndim-rank batch."""
  picked = jnp.asarray(values, jnp.float32)[t]
  return picked.reshape(picked.shape + (1,) * (ndim - 1))


def alpha_sigma(schedule: Schedule, t: jax.Array, ndim: int) -> tuple[jax.Array, jax.Array]:
  """(alpha_t, sigma_t) for integer t [b], each [b, 1, ..., 1] (rank ndim)."""
  return (_per_example(np.sqrt(schedule.alphas_cumprod), t, ndim),
          _per_example(np.sqrt(1.0 - schedule.alphas_cumprod), t, ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """x_t = alpha_t x_0 + sigma_t noise, a draw of q(x_t | x_0): x0, noise [b, ...]; t [b] int."""
  alpha, sigma = alpha_sigma(schedule, t, x0.ndim)
  return alpha * x0 + sigma * noise


def q_posterior_mean_variance(schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array
                              ) -> tuple[jax.Array, jax.Array]:
  """Mean [b, ...] and variance [b, 1, ..., 1] of q(x_{t-1} | x_t, x_0) (Ho et al., eq. 6-7).

  At t = 0 the "previous" step is the data itself: the mean is x_0 and the variance 0.
  """
  abar, abar_prev = schedule.alphas_cumprod, schedule.alphas_cumprod_prev
  betas = schedule.betas
  coef_x0 = betas * np.sqrt(abar_prev) / (1.0 - abar)
  coef_xt = (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)
  variance = betas * (1.0 - abar_prev) / (1.0 - abar)
  mean = _per_example(coef_x0, t, x0.ndim) * x0 + _per_example(coef_xt, t, x0.ndim) * x_t
  return mean, _per_example(variance, t, x0.ndim)


def to_x0_and_eps(prediction: jax.Array, x_t: jax.Array, alpha: jax.Array, sigma: jax.Array,
                  objective: str) -> tuple[jax.Array, jax.Array]:
  """A model's prediction in `objective` -> (x0, eps) implied at x_t; alpha, sigma broadcast."""
  if objective == "epsilon":
    return (x_t - sigma * prediction) / alpha, prediction
  if objective == "x0":
    return prediction, (x_t - alpha * prediction) / sigma
  if objective == "v":
    return alpha * x_t - sigma * prediction, sigma * x_t + alpha * prediction
  raise ValueError(f"unknown objective {objective!r}; objectives are {OBJECTIVES}")


def from_x0_and_eps(x0: jax.Array, eps: jax.Array, alpha: jax.Array, sigma: jax.Array,
                    objective: str) -> jax.Array:
  """(x0, eps) -> what a model trained on `objective` predicts (the training target)."""
  if objective == "epsilon":
    return eps
  if objective == "x0":
    return x0
  if objective == "v":
    return alpha * eps - sigma * x0
  raise ValueError(f"unknown objective {objective!r}; objectives are {OBJECTIVES}")


def sample_timesteps(rng: jax.Array, batch_size: int, num_timesteps: int) -> jax.Array:
  """Training timesteps, uniform over 0 .. T-1: [batch_size] int32."""
  return jax.random.randint(rng, (batch_size,), 0, num_timesteps, dtype=jnp.int32)


def diffusion_loss(prediction: jax.Array, x0: jax.Array, noise: jax.Array, alpha: jax.Array,
                   sigma: jax.Array, objective: str) -> dict[str, jax.Array]:
  """Per-example squared errors of a prediction at x_t = alpha x0 + sigma noise.

  Args:
    prediction: the model's output [b, H, W, C] in the `objective` parameterization.
    x0, noise: the clean images and the noise that made x_t, [b, H, W, C].
    alpha, sigma: [b, 1, 1, 1].
    objective: "epsilon" | "v" | "x0".
  Returns:
    dict of [b] arrays, each a mean over pixels: loss (the squared error on the objective's own
    target, what training minimizes) and mse_epsilon, mse_v, mse_x0 (the errors of the noise,
    v and clean image the prediction implies). The implied x0 is clipped to the data range
    [-1, 1], as the samplers clip it, in mse_x0 and in the v of mse_v: near t = T-1 an epsilon
    model's x0 divides by alpha ~ 0, and unclipped these means would be dominated by that noise.
  """
  x_t = alpha * x0 + sigma * noise
  target = from_x0_and_eps(x0, noise, alpha, sigma, objective)
  x0_hat, eps_hat = to_x0_and_eps(prediction, x_t, alpha, sigma, objective)
  x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
  v_hat = from_x0_and_eps(x0_hat, eps_hat, alpha, sigma, "v")
  v = from_x0_and_eps(x0, noise, alpha, sigma, "v")

  def mse(a, b):
    return jnp.mean(jnp.square(a - b).reshape(a.shape[0], -1), axis=-1)

  return {"loss": mse(prediction, target), "mse_epsilon": mse(eps_hat, noise),
          "mse_v": mse(v_hat, v), "mse_x0": mse(x0_hat, x0)}
