"""DPO, IPO and Bradley-Terry losses against hand-computed values and numpy loops."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import objectives

# Two pairs: the policy prefers the chosen response more than the reference does (log-ratio
# margin 1 - (-0.5) = 1.5), and less (margin -2 - 1 = -3).
POLICY_CHOSEN = [-5.0, -10.0]
POLICY_REJECTED = [-7.0, -4.0]
REFERENCE_CHOSEN = [-6.0, -8.0]
REFERENCE_REJECTED = [-6.5, -5.0]


def _dpo(beta, loss_type, *arrays):
  fn = jax.jit(functools.partial(objectives.dpo_loss, beta=beta, loss_type=loss_type))
  return fn(*(jnp.asarray(a, jnp.float32) for a in arrays))


def test_dpo_sigmoid_loss_and_stats_equal_hand_computed_values():
  losses, stats = _dpo(0.1, "sigmoid", POLICY_CHOSEN, POLICY_REJECTED, REFERENCE_CHOSEN,
                       REFERENCE_REJECTED)
  # -log sigmoid(0.1 * 1.5) = log(1 + e^-0.15); -log sigmoid(0.1 * -3) = log(1 + e^0.3).
  np.testing.assert_allclose(losses, [0.6209570477895321, 0.8543552444685272], rtol=1e-6)
  np.testing.assert_allclose(stats["chosen_reward"], [0.1, -0.2], rtol=1e-5)
  np.testing.assert_allclose(stats["rejected_reward"], [-0.05, 0.1], rtol=1e-5)
  np.testing.assert_allclose(stats["reward_margin"], [0.15, -0.3], rtol=1e-5)
  np.testing.assert_array_equal(stats["reward_accuracy"], [1.0, 0.0])
  assert losses.dtype == jnp.float32


def test_ipo_loss_equals_hand_computed_values():
  losses, _ = _dpo(0.1, "ipo", POLICY_CHOSEN, POLICY_REJECTED, REFERENCE_CHOSEN,
                   REFERENCE_REJECTED)
  # (margin - 1 / (2 * 0.1))^2 = (1.5 - 5)^2 and (-3 - 5)^2.
  np.testing.assert_allclose(losses, [12.25, 64.0], rtol=1e-6)
  losses, _ = _dpo(0.5, "ipo", POLICY_CHOSEN, POLICY_REJECTED, REFERENCE_CHOSEN,
                   REFERENCE_REJECTED)
  np.testing.assert_allclose(losses, [0.25, 16.0], rtol=1e-6)


def test_dpo_loss_is_log_2_when_policy_equals_reference():
  rng = np.random.default_rng(0)
  chosen, rejected = -rng.random((2, 5)) * 50
  losses, stats = _dpo(0.3, "sigmoid", chosen, rejected, chosen, rejected)
  np.testing.assert_allclose(losses, np.full(5, math.log(2.0)), rtol=1e-6)
  np.testing.assert_array_equal(stats["reward_margin"], np.zeros(5))


def test_dpo_gradient_reaches_the_policy_but_not_the_reference():
  beta = 0.1
  arrays = [jnp.asarray(a) for a in (POLICY_CHOSEN, POLICY_REJECTED, REFERENCE_CHOSEN,
                                     REFERENCE_REJECTED)]

  def total(*args):
    return objectives.dpo_loss(*args, beta=beta)[0].sum()

  grads = jax.jit(jax.grad(total, argnums=(0, 1, 2, 3)))(*arrays)
  # d/d(policy_chosen) of -log sigmoid(beta * m) is -beta * (1 - sigmoid(beta * m)).
  margin = np.array([1.5, -3.0])
  expected = -beta / (1.0 + np.exp(beta * margin))
  np.testing.assert_allclose(grads[0], expected, rtol=1e-5)
  np.testing.assert_allclose(grads[1], -expected, rtol=1e-5)
  np.testing.assert_array_equal(grads[2], np.zeros(2))
  np.testing.assert_array_equal(grads[3], np.zeros(2))


def test_dpo_rejects_an_unknown_loss_type_naming_the_allowed_ones():
  assert objectives.DPO_LOSS_TYPES == ("sigmoid", "ipo")
  with pytest.raises(ValueError, match="sigmoid.*ipo"):
    objectives.dpo_loss(*(jnp.zeros(2),) * 4, beta=0.1, loss_type="hinge")


def test_bradley_terry_loss_and_accuracy_equal_numpy():
  rng = np.random.default_rng(1)
  chosen = rng.normal(size=7).astype(np.float32) * 3
  rejected = rng.normal(size=7).astype(np.float32) * 3
  rejected[3] = chosen[3]  # a tie is not a correct ranking
  losses, accuracy = jax.jit(objectives.bradley_terry_loss)(jnp.asarray(chosen),
                                                            jnp.asarray(rejected))
  expected_losses = [math.log1p(math.exp(-(float(c) - float(r)))) for c, r in zip(chosen, rejected)]
  expected_accuracy = [1.0 if c > r else 0.0 for c, r in zip(chosen, rejected)]
  np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
  np.testing.assert_array_equal(accuracy, expected_accuracy)
  assert 0.0 < accuracy.sum() < 7.0  # the draw has both outcomes


def test_token_and_sequence_log_probs_equal_numpy_loops():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(2, 4, 6)).astype(np.float32) * 2
  targets = rng.integers(0, 6, (2, 4))
  mask = np.array([[0, 1, 1, 0], [1, 1, 1, 1]], np.float32)
  token = jax.jit(objectives.token_log_probs)(jnp.asarray(logits), jnp.asarray(targets))
  sequence = jax.jit(objectives.sequence_log_probs)(jnp.asarray(logits), jnp.asarray(targets),
                                                    jnp.asarray(mask))
  expected_token = np.zeros((2, 4))
  for b in range(2):
    for t in range(4):
      row = logits[b, t].astype(np.float64)
      expected_token[b, t] = row[targets[b, t]] - math.log(np.exp(row).sum())
  np.testing.assert_allclose(token, expected_token, rtol=1e-5)
  np.testing.assert_allclose(sequence, (expected_token * mask).sum(-1), rtol=1e-5)
  assert token.dtype == jnp.float32


def test_sequence_log_probs_of_bfloat16_logits_are_float32():
  logits = jnp.asarray(np.random.default_rng(3).normal(size=(1, 3, 5)), jnp.bfloat16)
  out = objectives.sequence_log_probs(logits, jnp.array([[0, 1, 2]]), jnp.ones((1, 3)))
  assert out.dtype == jnp.float32
