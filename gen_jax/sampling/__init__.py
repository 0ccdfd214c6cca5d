"""Decoding for language models (and, later, samplers for the image families)."""
from gen_jax.sampling.beam import Hypothesis, beam_search
from gen_jax.sampling.lm import generate, generate_batch, sample_continuations
from gen_jax.sampling.request import SampleRequest
from gen_jax.sampling.speculative import SpeculativeStats, layer_skip_draft, speculative_generate
from gen_jax.sampling.strategies import (SamplingParams, apply_repetition_penalty, choose_tokens,
                                         filter_logits)

__all__ = [
    "Hypothesis",
    "SampleRequest",
    "SamplingParams",
    "SpeculativeStats",
    "apply_repetition_penalty",
    "beam_search",
    "choose_tokens",
    "filter_logits",
    "generate",
    "generate_batch",
    "layer_skip_draft",
    "sample_continuations",
    "speculative_generate",
]
