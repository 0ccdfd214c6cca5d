"""The ppo family: RLHF with Proximal Policy Optimization (Schulman et al., 2017) against a reward
model under a per-token KL penalty to the reference (Ziegler et al., 2019; Ouyang et al., 2022).

Each step samples a response to every prompt of the batch with the current policy (the jitted
KV-cache sampler), then, in one jitted step: scores the responses (the policy's and the frozen
reference's log-probs, the value model's values, the frozen reward model's score at the last
token), turns them into per-token rewards (score at the end, -kl_coef * (log pi - log pi_ref) at
every token), advantages by GAE (whitened over the batch) and returns, and makes
train.epochs_per_batch passes of train.minibatches clipped-objective updates over them.

The score comes from a frozen reward model (ppo.reward_model: RLHF) or, on a task a program
checks, from Python reward functions (ppo.reward_functions: PPO with verifiable rewards, as in
Tulu 3's RLVR; no reward model): exactly one of the two.

Params: {"policy", "reference"}, "reward_model" when there is one, and the value model: "value"
(a reward model's shape, started from ppo.reward_model: InstructGPT's choice) with
ppo.value_model='separate', or "value_head" (a scalar head on the policy's own hidden states) with
'shared'. The policy and the reference start from init.source (the SFT stage); only the policy
and the value model train. With ppo.kl_target > 0 the KL coefficient adapts (Ziegler et al.'s
proportional controller) and is checkpointed with the state.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gen_jax import objectives, partition
from gen_jax.config.errors import require
from gen_jax.data import synthetic_tasks
from gen_jax.families import alignment, llm_sources, rl
from gen_jax.models import RewardModel, ScalarHead
from gen_jax.train.task import WEIGHT, ParamSpec, Task

VALUE_MODELS = ("separate", "shared")
POLICY, REFERENCE, REWARD_MODEL = alignment.POLICY, alignment.REFERENCE, "reward_model"
EARLIER_STAGE_FIELD = "ppo.reward_model"  # The workdir a run reads; a config without one fails.


def validate(config: ml_collections.ConfigDict) -> None:
  rl.validate_rollout(config)
  p = config.ppo
  require(p.value_model in VALUE_MODELS, "ppo.value_model",
          f"{p.value_model!r} is not one of {VALUE_MODELS}")
  for name in ("clip_eps", "value_clip_eps", "kl_horizon"):
    require(p[name] > 0, f"ppo.{name}", f"must be positive, got {p[name]}")
  for name in ("kl_coef", "kl_target", "value_loss_weight"):
    require(p[name] >= 0, f"ppo.{name}", f"must be >= 0, got {p[name]}")
  for name in ("gamma", "lam"):
    require(0 <= p[name] <= 1, f"ppo.{name}", f"must be in [0, 1], got {p[name]}")
  if p.reward_functions:
    require(not p.reward_model, "ppo.reward_functions",
            f"{p.reward_functions!r} and ppo.reward_model={p.reward_model!r} both score the "
            "responses; set one of them")
    synthetic_tasks.check_reward_functions(p.reward_functions, "ppo.reward_functions")
    require(p.value_model == "shared", "ppo.value_model",
            "'separate' starts the value model from the reward model, and ppo.reward_functions "
            "runs without one; use 'shared'")
    return
  require(bool(p.reward_model), "ppo.reward_model",
          "is empty; name the reward model's workdir ('workdir:DIR' of a reward run), or set "
          "ppo.reward_functions to score with the task's own checks")
  reward_model = llm_sources.load_reward_model(p.reward_model, "ppo.reward_model")
  require(reward_model.config.vocab_size == config.model.vocab_size, "ppo.reward_model",
          f"scores a vocabulary of {reward_model.config.vocab_size} tokens but the policy has "
          f"model.vocab_size={config.model.vocab_size}; the reward model reads the policy's tokens")
  if config.init.source:
    policy_tok = llm_sources.load(config.init.source, "init.source").tokenizer
    require(policy_tok.hf.to_str() == reward_model.tokenizer.hf.to_str(), "ppo.reward_model",
            "tokenizes differently from init.source; the reward model reads the policy's tokens")


def _models(config):
  """(policy, reference, reward model or None with ppo.reward_functions, value model or head)."""
  policy, reference = alignment.policy_and_reference(config)
  if config.ppo.reward_functions:
    return policy, reference, None, ScalarHead(policy.config.embed_dim, policy.config.param_dtype)
  reward_config = llm_sources.load_reward_model(config.ppo.reward_model, "ppo.reward_model").config
  value = (RewardModel(reward_config) if config.ppo.value_model == "separate"
           else ScalarHead(policy.config.embed_dim, policy.config.param_dtype))
  return policy, reference, RewardModel(reward_config), value


def _value_name(config) -> str:
  return "value" if config.ppo.value_model == "separate" else "value_head"


def param_spec(config: ml_collections.ConfigDict) -> ParamSpec:
  """alignment.policy_param_spec's {"policy", "reference"}, the frozen reward model and the
  trained value model (from the reward model) or value head (random)."""
  base = alignment.policy_param_spec(config)
  _, _, reward_model, value = _models(config)
  value_name = _value_name(config)
  dummy = jnp.zeros((1, config.model.max_seq_len), jnp.int32)

  def init(rng):
    params = base.init(rng)
    if reward_model is not None:
      params[REWARD_MODEL] = reward_model.init(jax.random.fold_in(rng, 1), dummy)["params"]
    value_input = (dummy if config.ppo.value_model == "separate"
                   else jnp.zeros((1, 1, config.model.embed_dim)))
    params[value_name] = value.init(jax.random.fold_in(rng, 2), value_input)["params"]
    return params

  def trainable(path):
    return path[0] == value_name or base.trainable(path)

  def pretrained():
    values = base.pretrained() if base.pretrained is not None else {}
    if reward_model is None:
      return values
    reward = partition.flatten(
        llm_sources.load_reward_model(config.ppo.reward_model, "ppo.reward_model").params)
    values.update({(REWARD_MODEL,) + p: v for p, v in reward.items()})
    if config.ppo.value_model == "separate":  # InstructGPT starts the value model as the RM.
      values.update({("value",) + p: v for p, v in reward.items()})
    return values

  return ParamSpec(init, trainable, pretrained, extra={"kl_coef": np.float32(config.ppo.kl_coef)})


inference_params = alignment.inference_params
sample = alignment.sample


def _policy_outputs(config, policy, value, params, inputs, targets, stats_fn):
  """(stats_fn of the policy's logits and the targets (alignment.output_stats; sliced with
  objective.logit_chunks), values [b, t]), in one pass of the policy when the value head shares
  it."""
  hidden = policy.apply({"params": params[POLICY]}, *inputs, outputs="hidden")
  stats = alignment.output_stats(policy, params[POLICY], hidden, targets,
                                 config.objective.logit_chunks, stats_fn)
  if config.ppo.value_model == "shared":
    return stats, value.apply({"params": params["value_head"]}, hidden)
  return stats, value.apply({"params": params["value"]}, *inputs)


def make_experience_fn(config: ml_collections.ConfigDict):
  """experience(params, extra, batch, rng) -> (batch with old_log_probs, advantages, returns,
  old_values; extra with the updated kl_coef; metrics), all under stop_gradient."""
  policy, reference, reward_model, value = _models(config)
  p = config.ppo

  def experience(params, extra, batch, rng):
    del rng
    params = jax.lax.stop_gradient(params)
    inputs, targets, mask = rl.shifted(batch)
    log_probs, values = _policy_outputs(config, policy, value, params, inputs, targets,
                                        objectives.token_log_probs)
    reference_log_probs = alignment.token_log_probs(reference, params[REFERENCE], inputs, targets,
                                                    config.objective.logit_chunks)
    if reward_model is None:  # ppo.reward_functions' sums, computed on the host by the rollout.
      scores = batch["scores"]
    else:
      scores = rl.reward_model_scores(reward_model, params[REWARD_MODEL], batch)
    kl = objectives.kl_penalty(log_probs, reference_log_probs, "k1") * mask  # [b, t]
    last = (mask * (jnp.cumsum(mask[:, ::-1], axis=1)[:, ::-1] == 1))  # 1 at each last target.
    rewards = -extra["kl_coef"] * kl + scores[:, None] * last
    advantages, returns = objectives.gae(rewards, values, mask, gamma=p.gamma, lam=p.lam)
    if p.whiten_advantages:
      advantages = objectives.masked_whiten(advantages, mask)
    sequence_kl = kl.sum(axis=1).mean()
    kl_coef = extra["kl_coef"]
    if p.kl_target > 0:  # Ziegler et al. (2019): move the coefficient toward the target KL.
      error = jnp.clip(sequence_kl / p.kl_target - 1, -0.2, 0.2)
      kl_coef = kl_coef * (1 + error * targets.shape[0] / p.kl_horizon)
    metrics = {"reward": scores.mean(), "true_reward": batch[rl.TRUE_REWARD].mean(),
               "kl": sequence_kl, "kl_coef": extra["kl_coef"],
               "non_score_reward": -(extra["kl_coef"] * kl).sum(axis=1).mean(),
               "response_length": mask.sum(axis=1).mean(),
               "value_explained_variance": objectives.explained_variance(values, returns, mask)}
    batch = {**batch, "old_log_probs": log_probs, "advantages": advantages, "returns": returns,
             "old_values": values}
    return batch, {**extra, "kl_coef": kl_coef.astype(jnp.float32)}, metrics
  return experience


def make_loss_fn(config: ml_collections.ConfigDict):
  """loss_fn(params, batch, rng) -> (clipped policy loss + value_loss_weight * clipped value loss,
  summed over response tokens; sums) on a minibatch of experience."""
  policy, _, _, value = _models(config)
  p = config.ppo

  def loss_fn(params, batch, rng):
    del rng
    inputs, targets, mask = rl.shifted(batch)
    (log_probs, entropy), values = _policy_outputs(config, policy, value, params, inputs,
                                                   targets, alignment.log_probs_and_entropy)
    policy_loss, policy_stats = objectives.ppo_policy_loss(
        log_probs, batch["old_log_probs"], batch["advantages"], mask, clip_eps=p.clip_eps)
    value_loss, value_stats = objectives.value_loss(
        values, batch["old_values"], batch["returns"], mask, clip_eps=p.value_clip_eps)
    sums = {WEIGHT: mask.sum(), "policy_loss": policy_loss, "value_loss": value_loss,
            "entropy": (entropy * mask).sum(),
            **policy_stats, **value_stats}
    return policy_loss + p.value_loss_weight * value_loss, sums
  return loss_fn


def dry_run_inputs(config: ml_collections.ConfigDict):
  return rl.dry_run_inputs(config, make_loss_fn(config), repeat=1,
                           scored=bool(config.ppo.reward_functions))


def build_task(config: ml_collections.ConfigDict, workdir: str, resuming: bool = False) -> Task:
  rewards = (synthetic_tasks.reward_function(config.ppo.reward_functions, "ppo.reward_functions")
             if config.ppo.reward_functions else None)  # None: the reward model scores.
  return rl.build_rl_task(config, workdir, resuming, param_spec=param_spec(config),
                          loss_fn=make_loss_fn(config), experience=make_experience_fn(config),
                          policy_and_reference=_models(config)[:2], repeat=1, rewards=rewards)
