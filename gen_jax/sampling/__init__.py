"""Decoding for language models (and, later, samplers for the image families)."""
from gen_jax.sampling.lm import generate, generate_batch
from gen_jax.sampling.strategies import (SamplingParams, apply_repetition_penalty, choose_tokens,
                                         filter_logits)

__all__ = ["SamplingParams", "apply_repetition_penalty", "choose_tokens", "filter_logits",
           "generate", "generate_batch"]
