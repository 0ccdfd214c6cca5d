"""Operations with several implementations behind one signature."""
from gen_jax.ops.attention import (ATTENTION_IMPLS, FLASH_SETTINGS, SEQUENCE_PARALLEL, attention,
                                   attention_mask, cudnn_serves, mosaic_serves, pallas_target,
                                   resolve_impl, split_impl)
from gen_jax.ops.ring_attention import from_stripes, sequence_shards, to_stripes

__all__ = ["ATTENTION_IMPLS", "FLASH_SETTINGS", "SEQUENCE_PARALLEL", "attention", "attention_mask",
           "cudnn_serves", "from_stripes", "mosaic_serves", "pallas_target", "resolve_impl",
           "sequence_shards", "split_impl", "to_stripes"]
