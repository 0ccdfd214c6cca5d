"""Pallas kernels (GPU and TPU), each matching an XLA reference in gen_jax.ops."""
from gen_jax.kernels.flash_attention import FLASH_BACKENDS, flash_attention

__all__ = ["FLASH_BACKENDS", "flash_attention"]
