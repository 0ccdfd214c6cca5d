"""PPO, GAE, GRPO and KL-estimator pieces against numpy references written with loops."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import objectives


def test_kl_estimators_match_their_definitions():
  rng = np.random.default_rng(0)
  log_probs = np.log(rng.random((3, 5))).astype(np.float32)
  ref_log_probs = np.log(rng.random((3, 5))).astype(np.float32)
  expected = {}
  for name in ("k1", "k2", "k3"):
    expected[name] = np.zeros((3, 5))
    for b in range(3):
      for t in range(5):
        ratio_ref_over_policy = math.exp(float(ref_log_probs[b, t]) - float(log_probs[b, t]))
        log_ratio = -math.log(ratio_ref_over_policy)
        expected[name][b, t] = {"k1": log_ratio, "k2": log_ratio ** 2 / 2,
                                "k3": ratio_ref_over_policy - 1 - math.log(ratio_ref_over_policy)
                                }[name]
  for name in objectives.KL_ESTIMATORS:
    fn = jax.jit(functools.partial(objectives.kl_penalty, estimator=name))
    got = fn(jnp.asarray(log_probs), jnp.asarray(ref_log_probs))
    np.testing.assert_allclose(got, expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
  with pytest.raises(ValueError, match="k1.*k2.*k3"):
    objectives.kl_penalty(jnp.zeros((1, 1)), jnp.zeros((1, 1)), "k4")


def test_k1_and_k3_averaged_over_policy_samples_approach_the_exact_kl():
  p = np.array([0.5, 0.3, 0.2])
  q = np.array([0.25, 0.45, 0.3])
  exact = float((p * np.log(p / q)).sum())  # 0.1438
  samples = np.random.default_rng(1).choice(3, size=(400, 500), p=p)
  log_p, log_q = jnp.asarray(np.log(p)[samples]), jnp.asarray(np.log(q)[samples])
  k1, k2, k3 = (objectives.kl_penalty(log_p, log_q, name) for name in ("k1", "k2", "k3"))
  # Standard errors over 200k samples are 1.2e-3 for k1 and 1.1e-4 for k3; allow 5 of them.
  np.testing.assert_allclose(float(k1.mean()), exact, atol=6e-3)
  np.testing.assert_allclose(float(k3.mean()), exact, atol=6e-4)
  assert float(k3.min()) >= 0.0
  # k2 is biased here (its expectation is 0.1612), which these tolerances can see.
  assert abs(float(k2.mean()) - exact) > 0.01


def test_k3_is_nonnegative_for_tiny_log_ratios():
  log_ratio = jnp.asarray([0.0, 1e-8, -1e-8, 1e-5, -1e-5, 3e-4, -3e-4], jnp.float32)
  k3 = objectives.kl_penalty(log_ratio, jnp.zeros_like(log_ratio), "k3")
  assert float(k3.min()) >= 0.0


def _gae_reference(rewards, values, mask, gamma, lam):
  """Walks each row's episode (its masked positions) backwards; nothing beyond it counts."""
  advantages = np.zeros_like(rewards, dtype=np.float64)
  for b in range(rewards.shape[0]):
    steps = [t for t in range(rewards.shape[1]) if mask[b, t] == 1]
    next_advantage = 0.0
    for k in reversed(range(len(steps))):
      t = steps[k]
      next_value = values[b, steps[k + 1]] if k + 1 < len(steps) else 0.0
      delta = rewards[b, t] + gamma * next_value - values[b, t]
      next_advantage = delta + gamma * lam * next_advantage
      advantages[b, t] = next_advantage
  returns = np.where(mask == 1, advantages + values, 0.0)
  return advantages, returns


def test_gae_equals_a_numpy_loop_over_each_episode():
  rng = np.random.default_rng(2)
  mask = np.zeros((3, 9), np.float32)
  mask[0, 2:6] = 1  # starts after a prompt, ends before the row does
  mask[1, :] = 1
  mask[2, 4] = 1  # a single-token response
  # Garbage outside the response must not leak into it.
  rewards = rng.normal(size=(3, 9)).astype(np.float32)
  values = rng.normal(size=(3, 9)).astype(np.float32)
  gamma, lam = 0.9, 0.8
  fn = jax.jit(functools.partial(objectives.gae, gamma=gamma, lam=lam))
  advantages, returns = fn(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask))
  expected_advantages, expected_returns = _gae_reference(rewards.astype(np.float64),
                                                         values.astype(np.float64), mask, gamma,
                                                         lam)
  np.testing.assert_allclose(advantages, expected_advantages, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(returns, expected_returns, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(advantages)[mask == 0], 0.0)
  # The single-token episode: A = r - V.
  np.testing.assert_allclose(advantages[2, 4], rewards[2, 4] - values[2, 4], rtol=1e-6)


# Ratios below, inside and above [0.8, 1.2] against a positive and a negative advantage.
_RATIOS = np.array([0.5, 0.85, 1.0, 1.15, 1.6])
_ADVANTAGES = np.array([[1.3], [-0.7]]) * np.ones((1, 5))


def _ppo_inputs():
  rng = np.random.default_rng(3)
  old_log_probs = np.log(rng.uniform(0.05, 0.9, (2, 5))).astype(np.float32)
  log_probs = (old_log_probs + np.log(_RATIOS)).astype(np.float32)
  mask = np.ones((2, 5), np.float32)
  mask[1, 3] = 0
  return log_probs, old_log_probs, _ADVANTAGES.astype(np.float32), mask


def test_ppo_clipped_loss_and_clip_fraction_equal_a_numpy_loop():
  log_probs, old_log_probs, advantages, mask = _ppo_inputs()
  clip_eps = 0.2
  fn = jax.jit(functools.partial(objectives.ppo_policy_loss, clip_eps=clip_eps))
  loss_sum, stats = fn(*(jnp.asarray(x) for x in (log_probs, old_log_probs, advantages, mask)))
  expected_loss = expected_clipped = expected_kl = 0.0
  for b in range(2):
    for t in range(5):
      if mask[b, t] == 0:
        continue
      log_ratio = float(log_probs[b, t]) - float(old_log_probs[b, t])
      ratio, a = math.exp(log_ratio), float(advantages[b, t])
      surrogate = ratio * a
      clipped_surrogate = min(max(ratio, 1 - clip_eps), 1 + clip_eps) * a
      expected_loss += -min(surrogate, clipped_surrogate)
      expected_clipped += clipped_surrogate < surrogate
      expected_kl += 0.5 * log_ratio ** 2
  np.testing.assert_allclose(float(loss_sum), expected_loss, rtol=1e-5)
  # By hand: ratio 1.6 with A > 0 and ratio 0.5 with A < 0 are the clipped ones.
  assert expected_clipped == 2
  assert float(stats["clip_fraction"]) == 2.0
  np.testing.assert_allclose(float(stats["approx_kl"]), expected_kl, rtol=1e-5)


def test_ppo_gradient_vanishes_on_clipped_tokens_and_skips_old_policy_and_advantages():
  log_probs, old_log_probs, advantages, mask = (jnp.asarray(x) for x in _ppo_inputs())

  def loss(*args):
    return objectives.ppo_policy_loss(*args, mask, clip_eps=0.2)[0]

  d_new, d_old, d_advantages = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(
      log_probs, old_log_probs, advantages)
  # d(-ratio A)/d log_prob = -ratio A where the unclipped term is chosen, 0 where the clip holds.
  clipped = np.zeros((2, 5), bool)
  clipped[0, 4] = clipped[1, 0] = True
  expected = np.where(clipped, 0.0, -_RATIOS * _ADVANTAGES) * np.asarray(mask)
  np.testing.assert_allclose(d_new, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(d_old, np.zeros((2, 5)))
  np.testing.assert_array_equal(d_advantages, np.zeros((2, 5)))


def test_value_loss_equals_a_numpy_loop():
  rng = np.random.default_rng(4)
  values, old_values, returns = rng.normal(size=(3, 2, 6)).astype(np.float32)
  mask = (rng.random((2, 6)) > 0.25).astype(np.float32)
  clip_eps = 0.3
  fn = jax.jit(functools.partial(objectives.value_loss, clip_eps=clip_eps))
  loss_sum, stats = fn(*(jnp.asarray(x) for x in (values, old_values, returns, mask)))
  expected_loss = expected_clipped = 0.0
  for b in range(2):
    for t in range(6):
      if mask[b, t] == 0:
        continue
      v, old, target = float(values[b, t]), float(old_values[b, t]), float(returns[b, t])
      clipped_v = old + min(max(v - old, -clip_eps), clip_eps)
      expected_loss += 0.5 * max((v - target) ** 2, (clipped_v - target) ** 2)
      expected_clipped += (clipped_v - target) ** 2 > (v - target) ** 2
  np.testing.assert_allclose(float(loss_sum), expected_loss, rtol=1e-5)
  assert 0 < expected_clipped < mask.sum()  # the draw exercises both branches
  assert float(stats["value_clip_fraction"]) == expected_clipped


def test_masked_mean_equals_numpy_along_an_axis_and_overall():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(3, 4)).astype(np.float32)
  mask = np.array([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]], np.float32)
  rows = jax.jit(functools.partial(objectives.masked_mean, axis=1))(jnp.asarray(x),
                                                                     jnp.asarray(mask))
  expected_rows = [x[0, [0, 2, 3]].mean(), 0.0, x[2].mean()]  # an empty row reads 0, not NaN
  np.testing.assert_allclose(rows, expected_rows, rtol=1e-5)
  overall = objectives.masked_mean(jnp.asarray(x), jnp.asarray(mask))
  np.testing.assert_allclose(float(overall), x[mask == 1].mean(), rtol=1e-5)


def test_masked_whiten_gives_zero_mean_unit_variance_on_masked_entries_and_zero_elsewhere():
  rng = np.random.default_rng(6)
  x = (rng.normal(size=(4, 7)) * 3 + 5).astype(np.float32)
  mask = (rng.random((4, 7)) > 0.3).astype(np.float32)
  out = np.asarray(jax.jit(objectives.masked_whiten)(jnp.asarray(x), jnp.asarray(mask)))
  counted = out[mask == 1]
  np.testing.assert_allclose(counted.mean(), 0.0, atol=1e-6)
  np.testing.assert_allclose(counted.var(), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(out[mask == 0], 0.0)
  selected = x[mask == 1].astype(np.float64)
  np.testing.assert_allclose(counted, (selected - selected.mean()) / selected.std(), rtol=1e-4,
                             atol=1e-5)

  kept_mean = np.asarray(jax.jit(functools.partial(objectives.masked_whiten, shift_mean=False))(
      jnp.asarray(x), jnp.asarray(mask)))
  np.testing.assert_allclose(kept_mean[mask == 1].mean(), selected.mean(), rtol=1e-5)
  np.testing.assert_allclose(kept_mean[mask == 1].var(), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(kept_mean[mask == 0], 0.0)


def test_explained_variance_equals_numpy():
  rng = np.random.default_rng(7)
  returns = rng.normal(size=(3, 5)).astype(np.float32) * 2
  values = (returns + rng.normal(size=(3, 5)) * 0.7).astype(np.float32)
  mask = (rng.random((3, 5)) > 0.3).astype(np.float32)
  counted_returns = [float(r) for r, m in zip(returns.ravel(), mask.ravel()) if m]
  counted_errors = [float(r - v) for r, v, m in zip(returns.ravel(), values.ravel(), mask.ravel())
                    if m]
  expected = 1 - np.var(counted_errors) / np.var(counted_returns)
  fn = jax.jit(objectives.explained_variance)
  got = fn(jnp.asarray(values), jnp.asarray(returns), jnp.asarray(mask))
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  assert 0.0 < expected < 1.0  # a value function that explains part of the returns
  # Returns that do not vary leave the ratio undefined; the function reads 0.
  constant = fn(jnp.asarray(values), jnp.full((3, 5), 2.0), jnp.asarray(mask))
  assert float(constant) == 0.0


def test_token_entropy_equals_numpy():
  rng = np.random.default_rng(8)
  logits = rng.normal(size=(2, 3, 5)).astype(np.float32) * 2
  logits[0, 0] = [0, 0, 0, 0, 0]  # uniform: log 5
  expected = np.zeros((2, 3))
  for b in range(2):
    for t in range(3):
      p = np.exp(logits[b, t].astype(np.float64))
      p /= p.sum()
      expected[b, t] = -sum(pi * math.log(pi) for pi in p)
  got = jax.jit(objectives.token_entropy)(jnp.asarray(logits))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  np.testing.assert_allclose(got[0, 0], math.log(5), rtol=1e-6)
  assert got.dtype == jnp.float32


def test_group_advantages_standardise_each_group_and_zero_an_undecided_one():
  rng = np.random.default_rng(9)
  rewards = rng.normal(size=(3, 6)).astype(np.float32) * 2 + 1
  rewards[1] = 0.1  # all equal, a value whose mean does not round back to itself
  out = np.asarray(jax.jit(objectives.group_advantages)(jnp.asarray(rewards)))
  for g in (0, 2):
    group = [float(r) for r in rewards[g]]
    mean = sum(group) / len(group)
    std = math.sqrt(sum((r - mean) ** 2 for r in group) / len(group))
    np.testing.assert_allclose(out[g], [(r - mean) / (std + 1e-6) for r in group], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(out[g].mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(out[g].std(), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(out[1], np.zeros(6))
