"""Preference losses on pairs of responses: DPO (Rafailov et al., 2023), IPO (Azar et al., 2023)
and the Bradley-Terry reward-model loss (Ouyang et al., 2022)."""
import jax
import jax.numpy as jnp

DPO_LOSS_TYPES = ("sigmoid", "ipo")


def dpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array, reference_chosen: jax.Array,
             reference_rejected: jax.Array, *, beta: float, loss_type: str = "sigmoid"
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-pair DPO or IPO loss from summed sequence log-probs.

  The implicit reward of a response is beta * (log pi(y|x) - log pi_ref(y|x)); DPO fits the
  Bradley-Terry likelihood of the preference under that reward, IPO regresses the log-ratio
  margin to 1 / (2 beta) so that it stays finite even on deterministic preferences.

  Args:
    policy_chosen, policy_rejected: [b] float, log pi(y|x) summed over response tokens.
    reference_chosen, reference_rejected: [b] float, the same under the frozen reference model;
      no gradient flows into them. (The IPO paper and TRL feed length-averaged log-probs to the
      IPO loss; pass those here if that is what you want, beta then means something different.)
    beta: strength of the KL regularisation towards the reference.
    loss_type: one of DPO_LOSS_TYPES.
  Returns:
    (losses [b] float32, stats) where stats holds [b] float32 arrays "chosen_reward",
    "rejected_reward", "reward_margin" and "reward_accuracy" (1 where the chosen reward is higher).
  """
  if loss_type not in DPO_LOSS_TYPES:
    raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}")
  policy_chosen, policy_rejected, reference_chosen, reference_rejected = (
      jnp.asarray(x, jnp.float32)
      for x in (policy_chosen, policy_rejected, reference_chosen, reference_rejected))
  reference_chosen = jax.lax.stop_gradient(reference_chosen)
  reference_rejected = jax.lax.stop_gradient(reference_rejected)

  chosen_log_ratio = policy_chosen - reference_chosen  # [b]
  rejected_log_ratio = policy_rejected - reference_rejected  # [b]
  logits = chosen_log_ratio - rejected_log_ratio  # [b]
  if loss_type == "sigmoid":
    losses = -jax.nn.log_sigmoid(beta * logits)
  else:
    losses = (logits - 1.0 / (2.0 * beta)) ** 2

  chosen_reward = jax.lax.stop_gradient(beta * chosen_log_ratio)
  rejected_reward = jax.lax.stop_gradient(beta * rejected_log_ratio)
  stats = {
      "chosen_reward": chosen_reward,
      "rejected_reward": rejected_reward,
      "reward_margin": chosen_reward - rejected_reward,
      "reward_accuracy": (chosen_reward > rejected_reward).astype(jnp.float32),
  }
  return losses, stats


def bradley_terry_loss(chosen_rewards: jax.Array, rejected_rewards: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
  """Negative log-likelihood that the chosen response wins, P = sigmoid(r_chosen - r_rejected).

  Args:
    chosen_rewards, rejected_rewards: [b] float scalar rewards from the reward model.
  Returns:
    (losses [b] float32, accuracy [b] float32: 1 where the chosen reward is strictly higher).
  """
  chosen = jnp.asarray(chosen_rewards, jnp.float32)
  rejected = jnp.asarray(rejected_rewards, jnp.float32)
  losses = -jax.nn.log_sigmoid(chosen - rejected)
  accuracy = jax.lax.stop_gradient(chosen > rejected).astype(jnp.float32)
  return losses, accuracy


def last_token_values(values: jax.Array, mask: jax.Array) -> jax.Array:
  """[b, t] per-position scores -> [b]: each row's score at its last position where mask is 1 (a
  reward model's score of a response ends there); 0 for a row with no such position.

  Args:
    values: [b, t] float.
    mask: [b, t] {0, 1}.
  """
  t = values.shape[1]
  last = t - 1 - jnp.argmax(mask[:, ::-1] > 0, axis=1)  # [b]
  picked = jnp.take_along_axis(values, last[:, None], axis=1)[:, 0]
  return jnp.where(mask.sum(axis=1) > 0, picked, 0.0).astype(jnp.float32)
