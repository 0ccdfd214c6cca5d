"""Losses as pure functions of (model outputs, batch); they know models but not training."""
from gen_jax.objectives.distill import distillation_kl
from gen_jax.objectives.lm import next_token_loss, packed_targets
from gen_jax.objectives.vae import (discretized_logistic_log_prob, gaussian_kl_to_standard_normal,
                                    negative_elbo)

__all__ = [
    "discretized_logistic_log_prob",
    "distillation_kl",
    "gaussian_kl_to_standard_normal",
    "negative_elbo",
    "next_token_loss",
    "packed_targets",
]
