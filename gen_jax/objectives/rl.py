"""Policy-gradient losses for RL from feedback: PPO (Schulman et al., 2017) with GAE (Schulman et
al., 2016), GRPO's group-relative advantages (Shao et al., 2024), and the k1/k2/k3 KL estimators
of Schulman's note "Approximating KL Divergence" (2020).

All functions work on [b, t] token arrays with a float {0, 1} mask marking response tokens and
return sums over masked tokens, so the caller can add microbatches and divide by the token count.
"""
import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k2", "k3")


def _f32(x: jax.Array) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def kl_penalty(log_probs: jax.Array, ref_log_probs: jax.Array, estimator: str) -> jax.Array:
  """Per-token estimates of KL(policy || reference) on tokens sampled from the policy.

  With log_ratio = log pi(x) - log pi_ref(x) and x ~ pi:
    k1 = log_ratio                          unbiased, high variance, can be negative;
    k2 = log_ratio^2 / 2                    biased, low variance, nonnegative;
    k3 = exp(-log_ratio) - 1 + log_ratio    unbiased, low variance, nonnegative.

  Args:
    log_probs: [b, t] float, log-probs of the sampled tokens under the policy.
    ref_log_probs: [b, t] float, the same under the frozen reference (no gradient flows into it).
    estimator: one of KL_ESTIMATORS.
  Returns:
    [b, t] float32 in nats.
  """
  if estimator not in KL_ESTIMATORS:
    raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
  log_ratio = _f32(log_probs) - jax.lax.stop_gradient(_f32(ref_log_probs))
  if estimator == "k1":
    return log_ratio
  if estimator == "k2":
    return 0.5 * jnp.square(log_ratio)
  # expm1 avoids the cancellation of exp(-r) - 1 near r = 0; the floor keeps rounding from making
  # a per-token estimate that is nonnegative in exact arithmetic slightly negative.
  return jnp.maximum(jnp.expm1(-log_ratio) + log_ratio, 0.0)


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """Mean of x over entries where mask is 1, along `axis` (all axes if None); 0 where none count.

  Args:
    x: float array; mask: float {0, 1} array of the same shape.
  """
  x, mask = _f32(x), _f32(mask)
  total = (x * mask).sum(axis=axis)
  count = mask.sum(axis=axis)
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True, eps: float = 1e-8
                  ) -> jax.Array:
  """Normalises x to zero mean and unit variance over the masked entries.

  Mean and population variance are taken over all masked entries of the whole array. With
  shift_mean=False the mean is added back, so only the scale changes (how PPO implementations
  whiten rewards without changing their sign). Entries where mask is 0 come out as 0.

  Args:
    x: float array; mask: float {0, 1} array of the same shape.
  Returns:
    float32 array of x's shape.
  """
  x, mask = _f32(x), _f32(mask)
  mean = masked_mean(x, mask)
  variance = masked_mean(jnp.square(x - mean), mask)
  whitened = (x - mean) * jax.lax.rsqrt(variance + eps)
  if not shift_mean:
    whitened = whitened + mean
  return whitened * mask


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, *, gamma: float, lam: float
        ) -> tuple[jax.Array, jax.Array]:
  """Generalized advantage estimates and value targets for one response per row.

  The response is a contiguous run of masked positions that may start anywhere (after the prompt)
  and end before the row does; the episode ends after its last token, so the value beyond it is 0:
    delta_t = r_t + gamma * m_{t+1} V_{t+1} - V_t
    A_t     = delta_t + gamma * lam * m_{t+1} A_{t+1}
  Both are targets, not things to differentiate through, so no gradient flows out.

  Args:
    rewards, values: [b, t] float (values from the rollout's value head).
    mask: [b, t] float {0, 1}, 1 on response tokens.
    gamma: discount; lam: GAE's bias-variance trade-off (lam=1 gives Monte-Carlo returns minus V).
  Returns:
    (advantages [b, t], returns [b, t] = advantages + values), float32, 0 where mask is 0.
  """
  rewards, values, mask = (jax.lax.stop_gradient(_f32(x)) for x in (rewards, values, mask))

  def step(carry, inputs):
    next_value, next_mask, next_advantage = carry  # each [b], position t+1
    reward, value, m = inputs  # each [b], position t
    delta = reward + gamma * next_mask * next_value - value
    advantage = delta + gamma * lam * next_mask * next_advantage
    return (value, m, advantage), advantage

  zeros = jnp.zeros(rewards.shape[:1], jnp.float32)
  time_major = tuple(x.T for x in (rewards, values, mask))  # each [t, b]
  _, advantages = jax.lax.scan(step, (zeros, zeros, zeros), time_major, reverse=True)
  advantages = advantages.T * mask  # [b, t]
  returns = (advantages + values) * mask
  return advantages, returns


def ppo_policy_loss(log_probs: jax.Array, old_log_probs: jax.Array, advantages: jax.Array,
                    mask: jax.Array, *, clip_eps: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PPO's clipped surrogate loss, -min(ratio A, clip(ratio, 1-eps, 1+eps) A), summed over tokens.

  Args:
    log_probs: [b, t] float, log-probs of the rollout tokens under the current policy.
    old_log_probs: [b, t] float, the same under the policy that sampled them (no gradient).
    advantages: [b, t] float (no gradient).
    mask: [b, t] float {0, 1}, 1 on response tokens.
    clip_eps: how far the ratio may move from 1 before the objective stops rewarding it.
  Returns:
    (loss_sum, stats): loss_sum a float32 scalar summed over masked tokens; stats holds float32
    sums over masked tokens: "clip_fraction" (tokens whose clipped term was the smaller, so they
    get no gradient) and "approx_kl" (k2 estimate of KL(old || new), 0.5 * log_ratio^2).
  """
  log_probs, mask = _f32(log_probs), _f32(mask)
  old_log_probs = jax.lax.stop_gradient(_f32(old_log_probs))
  advantages = jax.lax.stop_gradient(_f32(advantages))
  log_ratio = log_probs - old_log_probs
  ratio = jnp.exp(log_ratio)
  unclipped = ratio * advantages
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
  loss_sum = (-jnp.minimum(unclipped, clipped) * mask).sum()

  was_clipped = (jnp.abs(ratio - 1.0) > clip_eps) & (clipped < unclipped)
  stats = jax.lax.stop_gradient({
      "clip_fraction": (was_clipped.astype(jnp.float32) * mask).sum(),
      "approx_kl": (0.5 * jnp.square(log_ratio) * mask).sum(),
  })
  return loss_sum, stats


def value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array, *,
               clip_eps: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Clipped value loss, 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2).

  The clipped term keeps one update from moving the value far from the rollout's estimate, as
  the policy ratio clip does for the policy.

  Args:
    values: [b, t] float, the value head now.
    old_values: [b, t] float, the value head at rollout time (no gradient).
    returns: [b, t] float, the targets, e.g. from `gae` (no gradient).
    mask: [b, t] float {0, 1}.
    clip_eps: largest change of the value counted, in reward units.
  Returns:
    (loss_sum float32 scalar summed over masked tokens, {"value_clip_fraction": sum over masked
    tokens where the clipped error was the larger one}).
  """
  values, mask = _f32(values), _f32(mask)
  old_values = jax.lax.stop_gradient(_f32(old_values))
  returns = jax.lax.stop_gradient(_f32(returns))
  clipped_values = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
  unclipped_error = jnp.square(values - returns)
  clipped_error = jnp.square(clipped_values - returns)
  loss_sum = (0.5 * jnp.maximum(unclipped_error, clipped_error) * mask).sum()
  was_clipped = (clipped_error > unclipped_error).astype(jnp.float32)
  stats = {"value_clip_fraction": jax.lax.stop_gradient((was_clipped * mask).sum())}
  return loss_sum, stats


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
  """1 - Var(returns - values) / Var(returns) over masked entries (population variances).

  1 is a perfect value function, 0 one no better than a constant, below 0 worse than one. When
  the returns do not vary (or nothing is masked) the ratio is undefined and 0 is returned, so a
  degenerate batch reads as "explains nothing" instead of producing a NaN that stops the run.

  Args:
    values, returns: [b, t] float; mask: [b, t] float {0, 1}.
  Returns:
    a float32 scalar.
  """
  values, returns, mask = _f32(values), _f32(returns), _f32(mask)

  def variance(x):
    return masked_mean(jnp.square(x - masked_mean(x, mask)), mask)

  returns_variance = variance(returns)
  ratio = variance(returns - values) / jnp.where(returns_variance > 0, returns_variance, 1.0)
  return jax.lax.stop_gradient(jnp.where(returns_variance > 0, 1.0 - ratio, 0.0))


def token_entropy(logits: jax.Array) -> jax.Array:
  """Entropy of each position's next-token distribution.

  Args:
    logits: [b, t, v] float.
  Returns:
    [b, t] float32 in nats.
  """
  log_probs = jax.nn.log_softmax(_f32(logits), axis=-1)
  return -(jnp.exp(log_probs) * log_probs).sum(axis=-1)


def group_advantages(rewards: jax.Array, eps: float = 1e-6) -> jax.Array:
  """GRPO's advantages: each reward standardised within its group of samples for one prompt.

  Args:
    rewards: [num_groups, group_size] float, one scalar reward per sampled response.
    eps: keeps the division finite for groups with tiny spread.
  Returns:
    [num_groups, group_size] float32, (r - group mean) / (group population std + eps). A group
    whose rewards are all equal carries no signal about which response was better and gets
    exactly 0 (computing it would leave rounding noise in r - mean, scaled up by 1 / eps).
  """
  rewards = jax.lax.stop_gradient(_f32(rewards))
  mean = rewards.mean(axis=-1, keepdims=True)  # [num_groups, 1]
  std = rewards.std(axis=-1, keepdims=True)  # [num_groups, 1]
  all_equal = (rewards.max(axis=-1, keepdims=True) == rewards.min(axis=-1, keepdims=True))
  return jnp.where(all_equal, 0.0, (rewards - mean) / (std + eps))
