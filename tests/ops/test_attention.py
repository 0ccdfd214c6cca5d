"""ops.attention against a per-head numpy reference: GQA, causality, segments, padding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import ops
from tests import reference
from tests.conftest import kernel_grids, kernel_operand_ranks, pallas_calls


def _qkv(seed, b, t, s, n, k, h):
  r = np.random.default_rng(seed)
  return (r.normal(size=(b, t, n, h)).astype(np.float32), r.normal(size=(b, s, k, h)).astype(np.float32),
          r.normal(size=(b, s, k, h)).astype(np.float32))


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (4, 2), (4, 1), (6, 3)])
def test_grouped_query_attention_equals_multi_head_with_repeated_kv(num_heads, num_kv_heads):
  q, k, v = _qkv(0, 2, 7, 7, num_heads, num_kv_heads, 8)
  out = np.asarray(ops.attention(q, k, v, causal=True))
  group = num_heads // num_kv_heads
  mask = np.tril(np.ones((7, 7), bool))
  for b in range(2):
    expected = reference.mha(q[b], np.repeat(k[b], group, 1), np.repeat(v[b], group, 1), mask)
    np.testing.assert_allclose(out[b], expected, atol=1e-5)


def test_segments_and_padding():
  q, k, v = _qkv(1, 1, 6, 6, 2, 2, 4)
  segment_ids = np.array([[1, 1, 2, 2, 2, 0]])
  out = np.asarray(ops.attention(q, k, v, causal=True, segment_ids=segment_ids))
  seg = segment_ids[0]
  mask = np.tril(np.ones((6, 6), bool)) & (seg[:, None] == seg[None]) & (seg[:, None] != 0)
  np.testing.assert_allclose(out[0], reference.mha(q[0], k[0], v[0], mask), atol=1e-5)
  np.testing.assert_array_equal(out[0, 5], 0.0)  # Padding attends nowhere and outputs zeros.


def test_non_causal_with_different_key_length():
  q, k, v = _qkv(2, 1, 3, 5, 2, 1, 4)
  out = np.asarray(ops.attention(q, k, v, causal=False))
  expected = reference.mha(q[0], np.repeat(k[0], 2, 1), np.repeat(v[0], 2, 1), np.ones((3, 5), bool))
  np.testing.assert_allclose(out[0], expected, atol=1e-5)


def test_gradients_are_finite_with_fully_masked_rows():
  q, k, v = _qkv(3, 1, 4, 4, 2, 2, 4)
  seg = np.array([[1, 1, 0, 0]])
  grads = jax.grad(lambda q: ops.attention(q, k, v, causal=True, segment_ids=seg).sum())(q)
  assert np.isfinite(np.asarray(grads)).all()
  np.testing.assert_array_equal(np.asarray(grads)[0, 2:], 0.0)


def test_bad_arguments_are_named():
  q, k, v = _qkv(4, 1, 2, 2, 3, 2, 4)
  with pytest.raises(ValueError, match="multiple of kv heads"):
    ops.attention(q, k, v, causal=True)
  with pytest.raises(ValueError, match="attention impl: 'flash' is not one of"):
    ops.attention(q, q, q, causal=True, impl="flash")


def test_sliding_window_sees_only_the_most_recent_keys():
  q, k, v = _qkv(5, 1, 7, 7, 2, 1, 4)
  out = np.asarray(ops.attention(q, k, v, causal=True, sliding_window=3))
  pos = np.arange(7)
  mask = (pos[None] <= pos[:, None]) & (pos[:, None] - pos[None] < 3)
  expected = reference.mha(q[0], np.repeat(k[0], 2, 1), np.repeat(v[0], 2, 1), mask)
  np.testing.assert_allclose(out[0], expected, atol=1e-5)


@pytest.mark.parametrize("impl,backward_kernels", [("pallas", 2), ("pallas:tiles=16x16:dq=atomic", 1)])
def test_pallas_impl_equals_xla_forward_and_gradients(impl, backward_kernels):
  """impl='pallas' runs gen_jax.kernels' flash attention (the Pallas interpreter on CPU); the
  kernel settings after its colons reach every kernel call: dq=atomic leaves one backward kernel
  (dK/dV adding dQ's shares) where the default runs two (dK/dV, dQ)."""
  q, k, v = _qkv(6, 2, 20, 20, 4, 2, 8)
  seg = np.array([[1] * 7 + [2] * 10 + [0] * 3, [1] * 20])
  def loss(impl):
    return lambda q, k, v: (ops.attention(q, k, v, causal=True, segment_ids=seg, sliding_window=9,
                                          impl=impl) * np.sin(np.arange(q.size)).reshape(q.shape)).sum()
  for got, want in zip(jax.grad(loss(impl), argnums=(0, 1, 2))(q, k, v),
                       jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, atol=2e-5)
  grad_jaxpr = jax.make_jaxpr(jax.grad(loss(impl), argnums=(0, 1, 2)))(q, k, v).jaxpr
  assert len(pallas_calls(grad_jaxpr)) == 1 + backward_kernels
  np.testing.assert_allclose(ops.attention(q, k, v, causal=True, segment_ids=seg, impl="pallas"),
                             ops.attention(q, k, v, causal=True, segment_ids=seg), atol=2e-5)


def test_pallas_mosaic_runs_the_mosaic_kernel_where_it_serves_and_triton_elsewhere():
  """impl='pallas_mosaic': bf16 training calls go to the Mosaic GPU kernels (their
  interpreter on CPU), a decoding step's run-time offset and float32 to the Triton kernels; all
  equal the XLA reference, gradients too. Its settings reach the Mosaic GPU kernels: dq=atomic
  runs two (forward; dK/dV adding dQ), not three (the interpreted time of the third spared)."""
  q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in _qkv(9, 1, 70, 70, 2, 1, 64))
  seg = np.array([[1] * 30 + [2] * 36 + [0] * 4])
  assert ops.mosaic_serves(q, 0) and not ops.mosaic_serves(q, jnp.int32(3))
  assert not ops.mosaic_serves(q.astype(jnp.float32), 0)
  weights = np.sin(np.arange(q.size)).reshape(q.shape)

  def loss(impl, **options):
    return lambda q, k, v: (ops.attention(q, k, v, causal=True, impl=impl, **options).astype(
        jnp.float32) * weights).sum()

  kernels = lambda impl: len(pallas_calls(jax.make_jaxpr(jax.grad(
      loss(impl, segment_ids=seg), argnums=(0, 1, 2)))(q, k, v).jaxpr))
  assert (kernels("pallas_mosaic"), kernels("pallas_mosaic:dq=atomic")) == (3, 2)
  for impl, options in (("pallas_mosaic:dq=atomic", dict(segment_ids=seg)),
                        ("pallas_mosaic", dict(query_offset=jnp.int32(0)))):
    grads = jax.jit(jax.grad(loss(impl, **options), argnums=(0, 1, 2)))(q, k, v)
    up = [x.astype(jnp.float32) for x in (q, k, v)]
    want = jax.grad(loss("xla", **options), argnums=(0, 1, 2))(*up)
    for got, expected in zip(grads, want):
      np.testing.assert_allclose(np.asarray(got, np.float32), expected,
                                 atol=0.03 * np.abs(expected).max())
  # Which kernel ran: the Mosaic GPU interpreter simulates the GPU through host callbacks, the
  # Pallas interpreter that runs the Triton kernels in plain XLA operations.
  def lowered(offset):  # A Python int stays static in the closure; an array is a traced one.
    return jax.jit(lambda q, k, v: ops.attention(q, k, v, causal=True, query_offset=offset,
                                                 impl="pallas_mosaic")).lower(q, k, v).as_text()
  assert "callback" in lowered(0) and "callback" not in lowered(jnp.int32(0))


def test_auto_picks_the_kernel_for_the_backend_and_cudnn_refuses_what_it_cannot_mask():
  assert [ops.resolve_impl("auto", p) for p in ("tpu", "gpu", "cpu")] == ["pallas", "pallas", "xla"]
  assert [ops.resolve_impl("auto", p, cudnn_serves=True) for p in ("tpu", "gpu", "cpu")] == [
      "pallas", "cudnn", "xla"]
  assert ops.resolve_impl("xla", "tpu") == "xla"
  assert ops.resolve_impl("pallas", "gpu", cudnn_serves=True) == "pallas"
  q, k, v = _qkv(7, 1, 4, 6, 2, 2, 4)
  with pytest.raises(ValueError, match="impl 'cudnn' masks segment_ids .* self-attention only"):
    ops.attention(q, k, v, causal=False, segment_ids=np.ones((1, 4), np.int32),
                  key_segment_ids=np.ones((1, 6), np.int32), impl="cudnn")
  with pytest.raises(ValueError, match="impl 'cudnn' runs on a GPU, not on cpu"):
    ops.attention(q, k, v, causal=False, impl="cudnn")


def test_cudnn_serves_only_the_calls_its_kernel_computes():
  """auto's choice on a GPU: cuDNN where it computes the same thing, the Pallas kernel otherwise."""
  q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(8, 1, 16, 16, 4, 2, 64))
  assert ops.cudnn_serves(q, k, v, 0, None, causal=True)
  assert not ops.cudnn_serves(q, k, v, 0, np.ones((1, 16), np.int32), causal=True)  # Packed.
  assert not ops.cudnn_serves(q, k, v, 3, None, causal=True)  # Offset into the keys.
  assert not ops.cudnn_serves(q, k, v, jnp.int32(0), None, causal=True)  # Known at run time only.
  f32 = [x.astype(jnp.float32) for x in (q, k, v)]
  assert not ops.cudnn_serves(*f32, 0, None, causal=True)
  wide = [jnp.zeros(x.shape[:-1] + (256,), jnp.bfloat16) for x in (q, k, v)]
  assert not ops.cudnn_serves(*wide, 0, None, causal=True)
  odd = [jnp.zeros(x.shape[:-1] + (36,), jnp.bfloat16) for x in (q, k, v)]
  assert not ops.cudnn_serves(*odd, 0, None, causal=True)
  short_q = q[:, :8]
  assert not ops.cudnn_serves(short_q, k, v, 0, None, causal=True)
  assert ops.cudnn_serves(short_q, k, v, 0, None, causal=False)  # Cross-attention: no mask.


def test_impl_settings_parse_into_the_kernels_arguments_and_bad_ones_are_named():
  assert ops.split_impl("pallas_mosaic:tiles=64x128:dq=atomic") == (
      "pallas_mosaic", {"block_q": 64, "block_k": 128, "dq_atomic": True})
  assert ops.split_impl("pallas:triton=4x2:splits=2") == (
      "pallas", {"num_warps": 4, "num_stages": 2, "key_splits": 2})
  assert ops.split_impl("auto") == ("auto", {})
  for impl, message in [("xla:dq=atomic", "'xla' takes none"), ("auto:tiles=64x64", "'auto' takes"),
                        ("pallas:dq=fast", "setting 'dq=fast' is not one of tiles=BQxBK"),
                        ("pallas:tiles=64", "setting 'tiles=64'"), ("flash:dq=atomic", "'flash'"),
                        ("pallas:tiles=64x64:tiles=32x32", "setting 'tiles' given twice")]:
    with pytest.raises(ValueError, match=message):
      ops.split_impl(impl)


# The settings: a decoding step (not differentiated) takes all but dq=atomic.
@pytest.mark.parametrize("impl", ["xla", "pallas:splits=2:dq=atomic"])
@pytest.mark.parametrize("layer", [0, 2])
def test_attention_to_one_layer_of_a_stacked_cache_equals_attention_to_its_slice(impl, layer):
  """key_layer: a decoding step in a layer loop over a stacked cache. The Pallas kernel reads the
  layer in place (its call takes the whole stack, no slice of it is made); XLA takes the slice."""
  r = np.random.default_rng(3)
  stack = lambda: jnp.asarray(r.normal(size=(3, 2, 32, 2, 16)), jnp.float32)  # [L, b, s, k, h]
  keys, values = stack(), stack()
  query = jnp.asarray(r.normal(size=(2, 1, 4, 16)), jnp.float32)
  key_ids = np.ones((2, 32), np.int32)
  key_ids[1, 20:] = 0  # Empty slots of a shorter row.
  options = dict(causal=True, segment_ids=np.ones((2, 1), np.int32), key_segment_ids=key_ids,
                 impl=impl)

  def at_layer(query, keys, values, index, offset):
    return ops.attention(query, keys, values, query_offset=offset, key_layer=index, **options)
  got = jax.jit(at_layer)(query, keys, values, jnp.int32(layer), jnp.int32(19))
  want = ops.attention(query, keys[layer], values[layer], query_offset=jnp.int32(19), **options)
  np.testing.assert_allclose(got, want, atol=2e-5)
  jaxpr = jax.make_jaxpr(at_layer)(query, keys, values, jnp.int32(layer), jnp.int32(19))
  # The whole stack goes in, and the kernel takes the settings: its keys in 2 parts.
  assert (5 in kernel_operand_ranks(jaxpr.jaxpr)) == impl.startswith("pallas")
  assert all(grid[-1] == 2 for _, grid in kernel_grids(jaxpr.jaxpr))
  with pytest.raises(ValueError, match=r"key_layer: key and value must be \[layers, b, s, k, h\]"):
    ops.attention(query, keys[0], values[0], key_layer=0, **options)
