"""The grpo family: Group Relative Policy Optimization (Shao et al., 2024, "DeepSeekMath"): for
every prompt, grpo.group_size responses scored by Python reward functions, each
response's advantage its reward standardized within its group, a clipped ratio objective and a
KL penalty to the frozen reference (the k3 estimator) in the loss. No reward model and no value
model: verifiable tasks need neither.

Rewards come from the functions grpo.reward_functions names (gen_jax.data.synthetic_tasks:
exact_match, format), run on the host on each decoded reply; the rest runs in one jitted step:
the old and the reference log-probs once per batch, then train.epochs_per_batch passes of
train.minibatches updates. Params: {"policy", "reference"}, both from init.source; only the
policy trains. The loss averages over response tokens (as DAPO, Yu et al., 2025, rather than per
sequence first).
"""
import jax
import ml_collections

from gen_jax import objectives
from gen_jax.config.errors import require
from gen_jax.data import synthetic_tasks
from gen_jax.families import alignment, rl
from gen_jax.train.task import WEIGHT, Task

POLICY, REFERENCE = alignment.POLICY, alignment.REFERENCE


def validate(config: ml_collections.ConfigDict) -> None:
  rl.validate_rollout(config)
  g = config.grpo
  require(g.group_size >= 2, "grpo.group_size",
          f"must be at least 2 (advantages compare responses to one prompt), got {g.group_size}")
  synthetic_tasks.check_reward_functions(g.reward_functions, "grpo.reward_functions")
  require(g.clip_eps > 0, "grpo.clip_eps", f"must be positive, got {g.clip_eps}")
  require(g.kl_coef >= 0, "grpo.kl_coef", f"must be >= 0, got {g.kl_coef}")


param_spec = alignment.policy_param_spec
inference_params = alignment.inference_params
sample = alignment.sample


def make_experience_fn(config: ml_collections.ConfigDict):
  """experience(params, extra, batch, rng) -> (batch with old_log_probs, reference_log_probs and
  per-token advantages; extra; metrics)."""
  policy, reference = alignment.policy_and_reference(config)
  group_size = config.grpo.group_size
  chunks = config.objective.logit_chunks

  def experience(params, extra, batch, rng):
    del rng
    params = jax.lax.stop_gradient(params)
    inputs, targets, mask = rl.shifted(batch)
    log_probs = alignment.token_log_probs(policy, params[POLICY], inputs, targets, chunks)
    reference_log_probs = alignment.token_log_probs(reference, params[REFERENCE], inputs, targets,
                                                    chunks)
    scores = batch["scores"]  # [b * group_size], each prompt's group in consecutive rows.
    advantages = objectives.group_advantages(scores.reshape(-1, group_size)).reshape(-1)
    groups = scores.reshape(-1, group_size)
    metrics = {"reward": scores.mean(), "true_reward": batch[rl.TRUE_REWARD].mean(),
               "reward_std_in_group": groups.std(axis=1).mean(),
               "solved_groups": (groups.max(axis=1) > groups.min(axis=1)).mean(),
               "kl": (objectives.kl_penalty(log_probs, reference_log_probs, "k1") * mask
                      ).sum(axis=1).mean(),
               "response_length": mask.sum(axis=1).mean()}
    batch = {**batch, "old_log_probs": log_probs, "reference_log_probs": reference_log_probs,
             "advantages": advantages[:, None] * mask}
    return batch, extra, metrics
  return experience


def make_loss_fn(config: ml_collections.ConfigDict):
  """loss_fn(params, batch, rng) -> (clipped objective + kl_coef * k3 KL to the reference, summed
  over response tokens; sums)."""
  policy, _ = alignment.policy_and_reference(config)
  g = config.grpo

  def loss_fn(params, batch, rng):
    del rng
    inputs, targets, mask = rl.shifted(batch)
    hidden = policy.apply({"params": params[POLICY]}, *inputs, outputs="hidden")
    log_probs, entropy = alignment.output_stats(policy, params[POLICY], hidden, targets,
                                                config.objective.logit_chunks,
                                                alignment.log_probs_and_entropy)
    policy_loss, stats = objectives.ppo_policy_loss(
        log_probs, batch["old_log_probs"], batch["advantages"], mask, clip_eps=g.clip_eps)
    kl = (objectives.kl_penalty(log_probs, batch["reference_log_probs"], "k3") * mask).sum()
    sums = {WEIGHT: mask.sum(), "policy_loss": policy_loss, "kl_k3": kl,
            "entropy": (entropy * mask).sum(),
            **stats}
    return policy_loss + g.kl_coef * kl, sums
  return loss_fn


def dry_run_inputs(config: ml_collections.ConfigDict):
  return rl.dry_run_inputs(config, make_loss_fn(config), repeat=config.grpo.group_size,
                           scored=True)


def build_task(config: ml_collections.ConfigDict, workdir: str, resuming: bool = False) -> Task:
  return rl.build_rl_task(
      config, workdir, resuming, param_spec=param_spec(config), loss_fn=make_loss_fn(config),
      experience=make_experience_fn(config),
      policy_and_reference=alignment.policy_and_reference(config),
      repeat=config.grpo.group_size,
      rewards=synthetic_tasks.reward_function(config.grpo.reward_functions,
                                              "grpo.reward_functions"))
