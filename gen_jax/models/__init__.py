"""Pure Flax linen modules, one family per file; they know nothing of training."""
from gen_jax.models.transformer import Transformer, TransformerConfig
from gen_jax.models.vae import VAE, VAEConfig

__all__ = ["Transformer", "TransformerConfig", "VAE", "VAEConfig"]
