"""Pure Flax linen modules, one family per file; they know nothing of training."""
from gen_jax.models.moe import ROUTER_STATS, MoeMlp, expert_capacity
from gen_jax.models.reward import RewardModel, ScalarHead
from gen_jax.models.transformer import (Transformer, TransformerConfig, init_kv_cache,
                                        stack_layers, unstack_layers)
from gen_jax.models.vae import VAE, VAEConfig

__all__ = ["ROUTER_STATS", "RewardModel", "ScalarHead", "VAE", "MoeMlp", "Transformer",
           "TransformerConfig", "VAEConfig", "expert_capacity", "init_kv_cache", "stack_layers",
           "unstack_layers"]
