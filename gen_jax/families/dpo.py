"""The dpo family: Direct Preference Optimization (Rafailov et al., 2023) of a policy against a
frozen reference, with IPO (Azar et al., 2023) as dpo.loss_type='ipo'.

The policy and the reference both start from init.source (the SFT workdir; with an empty source,
the same seeded random init): the reference is the policy's starting point, frozen. Its
log-probabilities are computed in the same jitted step, under stop_gradient, and it is never
checkpointed (it is rebuilt from init.source). With model.lora_rank > 0 the policy trains LoRA
adapters and the reference is the base without them. Metrics: the implicit rewards
beta * log(pi / pi_ref) of both responses, their margin and how often the chosen one wins.

dpo.chosen_nll_weight > 0 adds that weight times the chosen response's per-token negative
log-likelihood to each pair's loss (RPO: Pang et al., 2024, "Iterative Reasoning Preference
Optimization"): plain DPO can lower the log-prob of both responses as long as the rejected one
falls faster, which on a task with one right answer lowers the right answer's probability too.
"""
import jax
import jax.numpy as jnp
import ml_collections

from gen_jax import data as data_lib
from gen_jax import objectives
from gen_jax.config.errors import require
from gen_jax.families import alignment, llm
from gen_jax.train.task import WEIGHT, Task

POLICY, REFERENCE = alignment.POLICY, alignment.REFERENCE


def validate(config: ml_collections.ConfigDict) -> None:
  alignment.validate_stage(config)
  llm.validate_logit_chunks(config)
  require(config.dpo.beta > 0, "dpo.beta", f"must be positive, got {config.dpo.beta}")
  require(config.dpo.loss_type in objectives.DPO_LOSS_TYPES, "dpo.loss_type",
          f"{config.dpo.loss_type!r} is not one of {objectives.DPO_LOSS_TYPES}")
  require(config.dpo.chosen_nll_weight >= 0, "dpo.chosen_nll_weight",
          f"must be >= 0, got {config.dpo.chosen_nll_weight}")


param_spec = alignment.policy_param_spec
inference_params = alignment.inference_params
sample = alignment.sample


def make_loss_fn(config: ml_collections.ConfigDict):
  """loss_fn(params, batch, rng) -> (summed DPO loss, sums) over the batch's pairs."""
  policy, reference = alignment.policy_and_reference(config)
  beta, loss_type = config.dpo.beta, config.dpo.loss_type
  nll_weight = config.dpo.chosen_nll_weight
  chunks = config.objective.logit_chunks

  def loss_fn(params, batch, rng):
    del rng
    rows = alignment.both_responses(batch)

    def log_probs(net, net_params):  # [2b] -> (chosen [b], rejected [b])
      tokens = alignment.token_log_probs(net, net_params, rows.model_inputs, rows.targets, chunks)
      return jnp.split((tokens * rows.target_weights).sum(axis=-1), 2)

    policy_chosen, policy_rejected = log_probs(policy, params[POLICY])
    chosen_tokens = jnp.split(rows.target_weights.sum(axis=-1), 2)[0]  # [b]
    chosen_nll = -policy_chosen / jnp.maximum(chosen_tokens, 1.0)  # [b], per token
    reference_chosen, reference_rejected = jax.lax.stop_gradient(
        log_probs(reference, params[REFERENCE]))
    losses, stats = objectives.dpo_loss(policy_chosen, policy_rejected, reference_chosen,
                                        reference_rejected, beta=beta, loss_type=loss_type)
    w = batch[data_lib.EXAMPLE_WEIGHT]  # 0 on the rows that pad a held-out batch.
    losses = losses + nll_weight * chosen_nll
    sums = {name: (value * w).sum() for name, value in stats.items()}
    sums.update({WEIGHT: w.sum(), "chosen_log_prob": (policy_chosen * w).sum(),
                 "rejected_log_prob": (policy_rejected * w).sum(),
                 "chosen_nll_per_token": (chosen_nll * w).sum()})
    return (losses * w).sum(), sums
  return loss_fn


def dry_run_inputs(config: ml_collections.ConfigDict):
  return make_loss_fn(config), alignment.pair_dry_run_batch(config)


def build_task(config: ml_collections.ConfigDict, workdir: str, resuming: bool = False) -> Task:
  return alignment.build_pair_task(config, workdir, resuming, param_spec=param_spec(config),
                                   loss_fn=make_loss_fn(config))

