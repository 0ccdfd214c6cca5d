"""Flash-attention kernels (GPU and TPU, Pallas interpreter) against ops.attention's XLA path.

Outputs and gradients wrt query, key and value, on lengths that are no multiple of the (small)
tiles, every grouped-query ratio of 4 heads, causal and not, sliding windows, packed documents with
padding and rows that see no key at all.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import ops
from gen_jax.kernels import FLASH_BACKENDS, flash_attention
from gen_jax.kernels.flash_attention_tiles import TileMask

# Small tiles, so every test walks several query and key blocks (Triton's dot needs 16).
SMALL_BLOCKS = {"gpu": 16, "tpu": 8}


def _qkv(seed, b, t, s, n, k, h, dtype=jnp.float32):
  r = np.random.default_rng(seed)
  return tuple(jnp.asarray(r.normal(size=shape), dtype)
               for shape in ((b, t, n, h), (b, s, k, h), (b, s, k, h)))


def _output_and_grads(attention_fn, query, key, value):
  """attention_fn's output and its vjp (dq, dk, dv) with a fixed random cotangent, jitted."""
  cotangent = jnp.asarray(np.random.default_rng(99).normal(size=query.shape), query.dtype)

  def run(query, key, value):
    out, vjp = jax.vjp(attention_fn, query, key, value)
    return (out, *vjp(cotangent))

  results = jax.jit(run)(query, key, value)
  assert [x.dtype for x in results] == [value.dtype, query.dtype, key.dtype, value.dtype]
  return [np.asarray(x, np.float32) for x in results]


def _check_against_reference(backend, query, key, value, *, atol, rtol=1e-5, blocks=True,
                             **options):
  """Asserts flash == reference for the output and all three gradients; returns flash's."""
  block = SMALL_BLOCKS[backend] if blocks else None
  flash = _output_and_grads(
      lambda q, k, v: flash_attention(q, k, v, backend=backend, block_q=block, block_k=block,
                                      interpret=True, **options), query, key, value)
  reference = _output_and_grads(
      lambda q, k, v: ops.attention(q, k, v, impl="xla", **options), query, key, value)
  for name, got, want in zip(("out", "dq", "dk", "dv"), flash, reference):
    assert np.isfinite(got).all(), name
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol, err_msg=name)
  return flash


SHAPES = {  # name: (b, t, s, n, k, h, options)
    "mha_causal": (2, 37, 37, 4, 4, 16, {"causal": True}),
    "gqa2_causal": (1, 37, 37, 4, 2, 8, {"causal": True}),
    "mqa_causal_scale": (2, 29, 29, 4, 1, 16, {"causal": True, "scale": 0.3}),
    "gqa2_bidirectional": (1, 37, 37, 4, 2, 32, {"causal": False}),
    "single_query": (2, 1, 29, 4, 2, 8, {"causal": False}),
    "shorter_queries": (1, 19, 45, 4, 1, 8, {"causal": False}),
    # Queries past key 20 + 19 fall out of every window: rows that see no key.
    "longer_queries_window": (1, 45, 21, 2, 2, 8, {"causal": False, "sliding_window": 20}),
    "window_causal": (1, 40, 40, 4, 2, 8, {"causal": True, "sliding_window": 7}),
}


@pytest.mark.parametrize("backend", FLASH_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(backend, shape):
  b, t, s, n, k, h, options = SHAPES[shape]
  _check_against_reference(backend, *_qkv(0, b, t, s, n, k, h), atol=2e-5, **options)


@pytest.mark.parametrize("backend", FLASH_BACKENDS)
def test_default_blocks_match_reference(backend):
  _check_against_reference(backend, *_qkv(1, 1, 45, 45, 4, 2, 16), atol=2e-5, blocks=False,
                           causal=True)


# Three packed documents then padding (0) in row 0; row 1 is one document and mostly padding.
PACKED = np.array([[1] * 9 + [2] * 13 + [3] * 14 + [0] * 4,
                   [5] * 11 + [0] * 29])


@pytest.mark.parametrize("backend", FLASH_BACKENDS)
@pytest.mark.parametrize("causal,sliding_window", [(False, None), (True, 6)])
def test_packed_documents_and_padding(backend, causal, sliding_window):
  query, key, value = _qkv(2, 2, 40, 40, 4, 2, 8)
  out, dq, dk, dv = _check_against_reference(
      backend, query, key, value, atol=2e-5, causal=causal, sliding_window=sliding_window,
      segment_ids=PACKED)
  padding = PACKED == 0
  # Padding sees nothing and is seen by nothing: exact zeros, not merely small numbers.
  for name, x in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv)):
    assert (x[padding] == 0).all(), name


@pytest.mark.parametrize("backend", FLASH_BACKENDS)
def test_cross_attention_with_unmatched_queries(backend):
  """Queries of document 2 find no key of their document: zero output and gradient, no NaN."""
  query_ids = np.array([[1] * 10 + [2] * 6 + [0] * 3])
  key_ids = np.array([[1] * 20 + [3] * 7 + [0] * 4])
  query, key, value = _qkv(3, 1, 19, 31, 4, 1, 8)
  out, dq, _, _ = _check_against_reference(backend, query, key, value, atol=2e-5, causal=False,
                                           segment_ids=query_ids, key_segment_ids=key_ids)
  unmatched = query_ids[0] != 1
  assert (out[0, unmatched] == 0).all() and (dq[0, unmatched] == 0).all()


@pytest.mark.parametrize("backend", FLASH_BACKENDS)
def test_bfloat16(backend):
  query, key, value = _qkv(4, 1, 40, 40, 4, 2, 16, dtype=jnp.bfloat16)
  _check_against_reference(backend, query, key, value, atol=3e-2, rtol=1e-2, causal=True,
                           segment_ids=PACKED[:1])


MASKS = [TileMask(causal=c, sliding_window=w, query_length=t, key_length=s, has_segments=False)
         for c, w, (t, s) in itertools.product((True, False), (None, 1, 5, 20),
                                              ((37, 37), (19, 45), (45, 21), (1, 29)))]


@pytest.mark.parametrize("mask", MASKS, ids=str)
@pytest.mark.parametrize("block_q,block_k", [(8, 8), (16, 8), (8, 32)])
def test_tile_ranges_are_exactly_the_tiles_that_need_work(mask, block_q, block_k):
  """Skipped tiles see nothing and unmasked tiles see everything: speed and correctness."""
  q_pos = np.arange(-(-mask.query_length // block_q) * block_q)[:, None]
  k_pos = np.arange(-(-mask.key_length // block_k) * block_k)[None, :]
  visible = np.asarray(mask.visible(q_pos, k_pos))
  num_q_blocks, num_k_blocks = visible.shape[0] // block_q, visible.shape[1] // block_k
  tiles = visible.reshape(num_q_blocks, block_q, num_k_blocks, block_k).transpose(0, 2, 1, 3)
  any_visible, all_visible = tiles.any(axis=(2, 3)), tiles.all(axis=(2, 3))

  def as_set(block_range):
    first, end = (int(x) for x in block_range)
    return set(range(first, end))

  for i in range(num_q_blocks):
    assert as_set(mask.key_blocks(i, block_q, block_k)) == set(np.flatnonzero(any_visible[i]))
    assert (as_set(mask.unmasked_key_blocks(i, block_q, block_k)) ==
            set(np.flatnonzero(all_visible[i])))
  for j in range(num_k_blocks):
    assert as_set(mask.query_blocks(j, block_q, block_k)) == set(np.flatnonzero(any_visible[:, j]))
    assert (as_set(mask.unmasked_query_blocks(j, block_q, block_k)) ==
            set(np.flatnonzero(all_visible[:, j])))


@pytest.mark.parametrize("changes,match", [
    ({"backend": "cuda"}, "backend 'cuda'"),
    ({"key": jnp.zeros((1, 8, 3, 8)), "value": jnp.zeros((1, 8, 3, 8))}, "multiple of kv heads"),
    ({"key": jnp.zeros((1, 8, 2, 4))}, "key .* and value .* same shape"),
    ({"key": jnp.zeros((1, 8, 2, 4)), "value": jnp.zeros((1, 8, 2, 4))}, "head_dim"),
    ({"value": jnp.zeros((1, 8, 2, 8), jnp.bfloat16)}, "share a dtype"),
    ({"sliding_window": 0}, "sliding_window"),
    ({"sliding_window": 2.5}, "sliding_window"),
    ({"block_q": 24}, "block_q"),
    ({"block_k": 8}, "block_k"),
    ({"backend": "tpu", "block_k": 12}, "block_k"),
    ({"backend": "tpu", "block_q": 64, "interpret": False},
     "block_q must be a positive multiple of 128 on TPU hardware"),
    ({"key_segment_ids": np.ones((1, 8), np.int32)}, "key_segment_ids needs segment_ids"),
    ({"segment_ids": np.ones((1, 7), np.int32)}, "segment_ids must have shape"),
    ({"segment_ids": np.ones((1, 6), np.int32), "query": jnp.zeros((1, 6, 4, 8))},
     "key_segment_ids is required"),
])
def test_bad_arguments_are_named(changes, match):
  arguments = {"query": jnp.zeros((1, 8, 4, 8)), "key": jnp.zeros((1, 8, 2, 8)),
               "value": jnp.zeros((1, 8, 2, 8)), "causal": True, "backend": "gpu",
               "interpret": True}
  with pytest.raises(ValueError, match=match):
    flash_attention(**{**arguments, **changes})
