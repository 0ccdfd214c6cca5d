"""Operations with several implementations behind one signature."""
from gen_jax.ops.attention import (ATTENTION_IMPLS, SEQUENCE_PARALLEL, attention, attention_mask,
                                   pallas_target, resolve_impl)

__all__ = ["ATTENTION_IMPLS", "SEQUENCE_PARALLEL", "attention", "attention_mask", "pallas_target",
           "resolve_impl"]
