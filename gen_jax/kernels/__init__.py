"""Pallas kernels (GPU and TPU), each matching an XLA reference in gen_jax.ops."""
from gen_jax.kernels.flash_attention import (FLASH_BACKENDS, flash_attention,
                                             flash_attention_at_layer, flash_attention_backward,
                                             flash_attention_with_lse)

__all__ = ["FLASH_BACKENDS", "flash_attention", "flash_attention_at_layer",
           "flash_attention_backward", "flash_attention_with_lse"]
