"""Losses as pure functions of (model outputs, batch); they know models but not training."""
from gen_jax.objectives.distill import distillation_kl
from gen_jax.objectives.lm import (chunked_logit_stats, chunked_next_token_loss,
                                   chunked_token_log_probs, next_token_loss, packed_targets,
                                   sequence_log_probs, token_log_probs)
from gen_jax.objectives.preference import (DPO_LOSS_TYPES, bradley_terry_loss, dpo_loss,
                                           last_token_values)
from gen_jax.objectives.rl import (KL_ESTIMATORS, explained_variance, gae, group_advantages,
                                   kl_penalty, masked_mean, masked_whiten, ppo_policy_loss,
                                   token_entropy, value_loss)
from gen_jax.objectives.vae import (discretized_logistic_log_prob, gaussian_kl_to_standard_normal,
                                    negative_elbo)

__all__ = [
    "DPO_LOSS_TYPES",
    "KL_ESTIMATORS",
    "bradley_terry_loss",
    "chunked_logit_stats",
    "chunked_next_token_loss",
    "chunked_token_log_probs",
    "discretized_logistic_log_prob",
    "distillation_kl",
    "dpo_loss",
    "explained_variance",
    "gae",
    "gaussian_kl_to_standard_normal",
    "group_advantages",
    "kl_penalty",
    "last_token_values",
    "masked_mean",
    "masked_whiten",
    "negative_elbo",
    "next_token_loss",
    "packed_targets",
    "ppo_policy_loss",
    "sequence_log_probs",
    "token_entropy",
    "token_log_probs",
    "value_loss",
]
