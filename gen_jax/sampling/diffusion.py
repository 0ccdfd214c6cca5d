"""Diffusion samplers: DDPM ancestral sampling (Ho et al., 2020), DDIM and its inversion (Song et
al., 2021), DPM-Solver++(2M) (Lu et al., 2022) and classifier-free guidance (Ho & Salimans, 2022).

Every sampler drives `model_fn(x, t) -> prediction`: x [b, H, W, C], t [b] float32 (the timestep
index 0 .. T-1), prediction [b, H, W, C] in the model's objective ("epsilon" | "v" | "x0";
gen_jax.objectives.diffusion). A step's coefficients depend only on the schedule and the chosen
timesteps, so they are computed once on the host in float64 and the loop over steps is a
`lax.scan`: the samplers jit as a whole and are deterministic given their rng.
"""
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.objectives.diffusion import Schedule, to_x0_and_eps

SAMPLERS = ("ddpm", "ddim", "dpm_solver")
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def sampling_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """num_steps distinct timesteps T-1 > ... >= T/num_steps - 1, evenly spaced: [num_steps] int.

  The "trailing" spacing (Lin et al., 2024): the first step starts from pure noise at T-1 and the
  last model call sits one interval above the data, not at t = 0, where sigma ~ 0 would make
  DPM-Solver's last lambda step huge and its extrapolation unstable. num_steps = T gives every
  timestep.
  """
  if not 0 < num_steps <= num_timesteps:
    raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
  starts = num_timesteps - np.arange(num_steps) * (num_timesteps / num_steps)
  # floor(x + 0.5), not np.round: round-half-to-even could map 1.5 and 2.5 to the same step.
  return (np.floor(starts + 0.5) - 1).astype(np.int32)


def classifier_free_guidance(apply_fn: Callable, condition, null_condition, scale: float
                             ) -> ModelFn:
  """A model_fn guided by `scale`: uncond + scale * (cond - uncond) (Ho & Salimans, 2022).

  Args:
    apply_fn: apply_fn(x, t, condition) -> prediction [b, H, W, C].
    condition, null_condition: pytrees of [b, ...] arrays (labels; the null class).
    scale: a Python float; 1 is the conditional model alone (one call of batch b), otherwise
      conditional and unconditional predictions come from one call on the stacked batch of 2b.
  """
  if scale == 1.0:
    return lambda x, t: apply_fn(x, t, condition)
  both = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), condition, null_condition)

  def model_fn(x, t):
    cond, uncond = jnp.split(apply_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both), 2)
    # cond + (scale - 1)(cond - uncond) is the same combination, written so scale 1 gives cond.
    return cond + (scale - 1.0) * (cond - uncond)
  return model_fn


def _predict(model_fn: ModelFn, x: jax.Array, t: jax.Array, alpha_bar: jax.Array, objective: str,
             clip_x0: bool) -> tuple[jax.Array, jax.Array]:
  """(x0, eps) the model implies at x (at timestep t, scalar, with abar_t = alpha_bar)."""
  alpha, sigma = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
  times = jnp.full((x.shape[0],), t, jnp.float32)
  x0, eps = to_x0_and_eps(model_fn(x, times).astype(jnp.float32), x, alpha, sigma, objective)
  if clip_x0:  # The data lie in [-1, 1]; eps is re-derived so the step stays on the same line.
    x0 = jnp.clip(x0, -1.0, 1.0)
    eps = (x - alpha * x0) / sigma
  return x0, eps


def _start(rng: jax.Array, shape: tuple[int, ...], noise: jax.Array | None):
  start_rng, loop_rng = jax.random.split(rng)
  x = jax.random.normal(start_rng, shape, jnp.float32) if noise is None else noise
  return x.astype(jnp.float32), loop_rng


def ddpm_sample(model_fn: ModelFn, schedule: Schedule, objective: str, rng: jax.Array,
                shape: tuple[int, ...], *, clip_x0: bool = False,
                noise: jax.Array | None = None) -> jax.Array:
  """Ancestral sampling through all T steps: x_{t-1} ~ q(x_{t-1} | x_t, x0_hat(x_t)).

  Args:
    shape: [b, H, W, C] of the samples; noise: x_{T-1} (default: drawn from rng).
  Returns:
    x_0 samples [b, H, W, C] (the posterior mean at t = 0, which is x0_hat, with no noise added).
  """
  abar, abar_prev, betas = (schedule.alphas_cumprod, schedule.alphas_cumprod_prev, schedule.betas)
  steps = np.arange(schedule.num_timesteps - 1, -1, -1)
  coef_x0 = betas * np.sqrt(abar_prev) / (1.0 - abar)
  coef_xt = (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)
  std = np.sqrt(betas * (1.0 - abar_prev) / (1.0 - abar))  # 0 at t = 0.
  x, rng = _start(rng, shape, noise)
  per_step = [jnp.asarray(a[steps], jnp.float32) for a in (abar, coef_x0, coef_xt, std)]

  def step(x, inputs):
    t, alpha_bar, c_x0, c_xt, sd, key = inputs
    x0, _ = _predict(model_fn, x, t, alpha_bar, objective, clip_x0)
    return c_x0 * x0 + c_xt * x + sd * jax.random.normal(key, x.shape, jnp.float32), None

  keys = jax.random.split(rng, len(steps))
  x, _ = jax.lax.scan(step, x, (jnp.asarray(steps, jnp.float32), *per_step, keys))
  return x


def _ddim_alphas(schedule: Schedule, num_steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(timesteps, abar at each, abar at the next one): the last step goes to abar = 1 (the data)."""
  steps = sampling_timesteps(schedule.num_timesteps, num_steps)
  abar = schedule.alphas_cumprod[steps]
  return steps, abar, np.concatenate([abar[1:], [1.0]])


def ddim_sample(model_fn: ModelFn, schedule: Schedule, objective: str, rng: jax.Array,
                shape: tuple[int, ...], num_steps: int, *, eta: float = 0.0,
                clip_x0: bool = False, noise: jax.Array | None = None) -> jax.Array:
  """DDIM over num_steps timesteps (Song et al., 2021, eq. 12); eta 0 is deterministic given x_T,
  eta 1 matches DDPM's posterior variance.

  x_prev = alpha_prev x0_hat + sqrt(1 - abar_prev - s^2) eps_hat + s z, with
  s = eta sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).
  Returns x_0 samples [b, H, W, C]; noise is x_T (default: drawn from rng).
  """
  steps, abar, abar_next = _ddim_alphas(schedule, num_steps)
  s = eta * np.sqrt((1.0 - abar_next) / (1.0 - abar) * (1.0 - abar / abar_next))
  eps_coef = np.sqrt(np.maximum(1.0 - abar_next - s**2, 0.0))
  x, rng = _start(rng, shape, noise)
  per_step = [jnp.asarray(a, jnp.float32) for a in (abar, np.sqrt(abar_next), eps_coef, s)]

  def step(x, inputs):
    t, alpha_bar, x0_coef, e_coef, sd, key = inputs
    x0, eps = _predict(model_fn, x, t, alpha_bar, objective, clip_x0)
    x = x0_coef * x0 + e_coef * eps
    if eta > 0:  # eta is a Python float: eta 0 draws no noise at all.
      x = x + sd * jax.random.normal(key, x.shape, jnp.float32)
    return x, None

  keys = jax.random.split(rng, num_steps)
  x, _ = jax.lax.scan(step, x, (jnp.asarray(steps, jnp.float32), *per_step, keys))
  return x


def ddim_invert(model_fn: ModelFn, schedule: Schedule, objective: str, x0: jax.Array,
                num_steps: int, *, fixed_point_iterations: int = 0) -> jax.Array:
  """Deterministic DDIM run forward: x_0 [b, H, W, C] -> x_T [b, H, W, C], the noise from which
  `ddim_sample(..., num_steps, eta=0, noise=x_T)` returns near x_0.

  The sampler's step x' = sqrt(abar_next) x0_hat + sqrt(1 - abar_next) eps(x_t, t) is solved for
  x_t with eps taken at x' instead of x_t (Song et al., 2021, Sec. 4.3; Dhariwal & Nichol, 2021,
  App. F), which is exact only as the steps shrink. Each of `fixed_point_iterations` re-solves it
  with eps at the latest estimate of x_t (Pan et al., 2023), converging to the exact inverse of
  the sampler's step at one more model call per step each.
  """
  steps, abar, abar_from = (a[::-1] for a in _ddim_alphas(schedule, num_steps))
  per_step = [jnp.asarray(a, jnp.float32) for a in (abar, np.sqrt(abar), np.sqrt(1.0 - abar),
                                                    np.sqrt(abar_from), np.sqrt(1.0 - abar_from))]

  def step(x, inputs):
    t, alpha_bar, alpha, sigma, alpha_from, sigma_from = inputs

    def solve(x_t):
      _, eps = _predict(model_fn, x_t, t, alpha_bar, objective, clip_x0=False)
      clean = (x - sigma_from * eps) / alpha_from  # The x0_hat the sampler's step would use.
      return alpha * clean + sigma * eps

    x_t = solve(x)
    for _ in range(fixed_point_iterations):
      x_t = solve(x_t)
    return x_t, None

  x, _ = jax.lax.scan(step, x0.astype(jnp.float32), (jnp.asarray(steps, jnp.float32), *per_step))
  return x


def dpm_solver_sample(model_fn: ModelFn, schedule: Schedule, objective: str, rng: jax.Array,
                      shape: tuple[int, ...], num_steps: int, *, clip_x0: bool = False,
                      noise: jax.Array | None = None) -> jax.Array:
  """DPM-Solver++(2M) (Lu et al., 2022, Algorithm 2): a second-order multistep solver of the
  probability-flow ODE in lambda = log(alpha / sigma), on data (x0) predictions.

  num_steps model calls at the timesteps t_0 > ... > t_{N-1}; step i goes from t_i to t_{i+1}
  (t_N: the data, sigma = 0):
    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (exp(-h_i) - 1) D_i,
    D_i = (1 + 1 / (2 r_i)) x0_i - x0_{i-1} / (2 r_i),  h_i = lambda_{i+1} - lambda_i,
    r_i = h_{i-1} / h_i;
  the first step uses D_0 = x0_0 (no earlier prediction) and the last returns x0_{N-1} (h is
  infinite there: first order, as diffusers' lower_order_final does).
  Returns x_0 samples [b, H, W, C]; noise is x_T (default: drawn from rng).
  """
  steps = sampling_timesteps(schedule.num_timesteps, num_steps)
  abar = schedule.alphas_cumprod[steps]
  alpha, sigma = np.sqrt(abar), np.sqrt(1.0 - abar)
  lam = np.log(alpha) - np.log(sigma)
  ratio, coef = np.zeros(num_steps), -np.ones(num_steps)  # The last step: x = x0.
  ratio[:-1] = sigma[1:] / sigma[:-1]
  h = lam[1:] - lam[:-1]  # [N-1]
  coef[:-1] = alpha[1:] * np.expm1(-h)
  w_cur, w_prev = np.ones(num_steps), np.zeros(num_steps)
  r = h[:-1] / h[1:]  # r_i for i = 1 .. N-2
  w_cur[1:-1] = 1.0 + 1.0 / (2.0 * r)
  w_prev[1:-1] = -1.0 / (2.0 * r)
  x, _ = _start(rng, shape, noise)
  per_step = [jnp.asarray(a, jnp.float32) for a in (abar, ratio, coef, w_cur, w_prev)]

  def step(carry, inputs):
    x, previous_x0 = carry
    t, alpha_bar, sigma_ratio, x0_coef, weight_cur, weight_prev = inputs
    x0, _ = _predict(model_fn, x, t, alpha_bar, objective, clip_x0)
    data = weight_cur * x0 + weight_prev * previous_x0
    return (sigma_ratio * x - x0_coef * data, x0), None

  (x, _), _ = jax.lax.scan(step, (x, jnp.zeros_like(x)),
                           (jnp.asarray(steps, jnp.float32), *per_step))
  return x


def sample(sampler: str, model_fn: ModelFn, schedule: Schedule, objective: str, rng: jax.Array,
           shape: tuple[int, ...], *, num_steps: int, eta: float = 0.0, clip_x0: bool = False
           ) -> jax.Array:
  """Samples [b, H, W, C] with the named sampler ("ddpm" takes all T steps, ignoring num_steps)."""
  if sampler == "ddpm":
    return ddpm_sample(model_fn, schedule, objective, rng, shape, clip_x0=clip_x0)
  if sampler == "ddim":
    return ddim_sample(model_fn, schedule, objective, rng, shape, num_steps, eta=eta,
                       clip_x0=clip_x0)
  if sampler == "dpm_solver":
    return dpm_solver_sample(model_fn, schedule, objective, rng, shape, num_steps, clip_x0=clip_x0)
  raise ValueError(f"unknown sampler {sampler!r}; samplers are {SAMPLERS}")
