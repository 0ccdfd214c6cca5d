"""Decoding for language models (and, later, samplers for the image families)."""
from gen_jax.sampling.lm import choose_token, generate

__all__ = ["choose_token", "generate"]
