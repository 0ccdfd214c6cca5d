"""The Mosaic GPU (Hopper) kernels of flash attention, backend="mosaic_gpu": forward, dK/dV, dQ.

Forward and backward lower to three Mosaic GPU custom calls
(register layouts, wgmma shapes and shared-memory transforms are checked while lowering), and
unsupported calls are refused by name. Numerics: JAX's Mosaic GPU interpreter runs the kernel's
three warpgroups as threads on the CPU with simulated shared memory, barriers and TMA copies, so
the tile walk, the masks, the barrier protocol (a missed phase deadlocks or fails) and the
softmax run as written; the interpreter's wgmma reads both operands from shared memory, so there
the kernel stages the probabilities (and on JAX 0.10, which transposes no operand, a transposed
copy of the keys) where the GPU multiplies straight from registers and a transposed view.
GEN_JAX_COMPILED_KERNELS=1 on a Hopper GPU runs them compiled (device_checks.sh kernel_tests).
"""
import contextlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import ops
from gen_jax.kernels import flash_attention, flash_attention_with_lse

COMPILED = os.environ.get("GEN_JAX_COMPILED_KERNELS") == "1" and jax.default_backend() == "gpu"
_JAX_VERSION = tuple(int(x) for x in jax.__version__.split(".")[:2])

# name: (b, t, s, n, k, h, options); lengths no multiple of the tiles.
CASES = {
    "causal_gqa2": (1, 150, 150, 4, 2, 64, {"causal": True}),  # 2 CTAs, the last half-full.
    "window_packed": (1, 300, 300, 2, 1, 64, {"causal": True, "sliding_window": 70,
                                              "segment_ids": "packed"}),
    "cache_offset_h128": (1, 70, 330, 2, 2, 128, {"causal": True, "query_offset": 260}),
    "bidirectional_mqa": (1, 130, 130, 3, 1, 64, {"causal": False}),
}


def _inputs(case, seed=0):
  """case: a name in CASES, or its (b, t, s, n, k, h, options)."""
  b, t, s, n, k, h, options = CASES[case] if isinstance(case, str) else case
  r = np.random.default_rng(seed)
  query, key, value = (jnp.asarray(r.normal(size=shape), jnp.bfloat16)
                       for shape in ((b, t, n, h), (b, s, k, h), (b, s, k, h)))
  options = dict(options)
  if options.get("segment_ids") == "packed":  # Three documents, then padding that sees nothing.
    ids = np.concatenate([np.full(90, 1), np.full(120, 2), np.full(80, 3), np.zeros(t - 290)])
    options["segment_ids"] = jnp.asarray(np.tile(ids, (b, 1)), jnp.int32)
  return (query, key, value), options


def _interpret():
  return not COMPILED


def _outputs_and_grads(fn, query, key, value):
  cotangent = jnp.asarray(np.random.default_rng(7).normal(size=query.shape), jnp.float32)

  def run(q, k, v):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out, *vjp(cotangent.astype(out.dtype)))

  return [np.asarray(x, np.float32) for x in jax.jit(run)(query, key, value)]


@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients_match_the_reference(case):
  """Out, dq, dk and dv against the XLA reference in float32 on the same bf16 inputs; and against
  the Triton kernels, which round the same way, far closer."""
  (query, key, value), options = _inputs(case)
  flash = _outputs_and_grads(lambda q, k, v: flash_attention(
      q, k, v, backend="mosaic_gpu", interpret=_interpret(), **options), query, key, value)
  triton = _outputs_and_grads(lambda q, k, v: flash_attention(
      q, k, v, backend="gpu", interpret=_interpret(), **options), query, key, value)
  up = lambda x: x.astype(jnp.float32)
  reference = _outputs_and_grads(lambda q, k, v: ops.attention(
      up(q), up(k), up(v), impl="xla", **options), query, key, value)
  for name, got, same_rounding, want in zip(("out", "dq", "dk", "dv"), flash, triton, reference):
    assert np.isfinite(got).all(), name
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, atol=0.02 * scale, err_msg=name)
    np.testing.assert_allclose(got, same_rounding, atol=0.01 * scale, err_msg=name)
  if "segment_ids" in options:  # Padding sees nothing and is seen by nothing: exact zeros.
    padding = np.asarray(options["segment_ids"]) == 0
    for name, x in zip(("out", "dq", "dk", "dv"), flash):
      assert (x[padding] == 0).all(), name


def test_dq_from_the_dkdv_kernel_matches_the_reference():
  """dq_atomic: the dK/dV kernel adds each tile's dS K into dQ (on the GPU by TMA's reducing
  copies; interpreted, into per-key-block slices summed after), with no dQ kernel. Out, dq, dk and
  dv as test_forward_and_gradients_match_the_reference checks them. One case for all of it
  (interpreted time): GQA, packed documents with padding, a window, and head_dim 128 (the shares
  go out in two halves of 64 columns)."""
  b, t, s, n, k, _, options = CASES["window_packed"]
  (query, key, value), options = _inputs((b, t, s, n, k, 128, options))
  run = lambda backend, **extra: _outputs_and_grads(lambda q, k, v: flash_attention(
      q, k, v, backend=backend, interpret=_interpret(), **options, **extra), query, key, value)
  fused, triton = run("mosaic_gpu", dq_atomic=True), run("gpu")
  up = lambda x: x.astype(jnp.float32)
  reference = _outputs_and_grads(lambda q, k, v: ops.attention(
      up(q), up(k), up(v), impl="xla", **options), query, key, value)
  for name, got, same_rounding, want in zip(("out", "dq", "dk", "dv"), fused, triton, reference):
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, atol=0.02 * scale, err_msg=name)
    np.testing.assert_allclose(got, same_rounding, atol=0.01 * scale, err_msg=name)
  padding = np.asarray(options["segment_ids"]) == 0
  assert (fused[1][padding] == 0).all()  # No share reaches a padding query's dQ.


def test_log_sum_exp_matches_the_reference():
  (query, key, value), options = _inputs("window_packed")
  out, lse = flash_attention_with_lse(query, key, value, backend="mosaic_gpu",
                                      interpret=_interpret(), **options)
  up = lambda x: x.astype(jnp.float32)
  _, want = flash_attention_with_lse(up(query), up(key), up(value), backend="gpu",
                                     interpret=True, **options)
  padding = np.asarray(options["segment_ids"]) == 0
  assert np.all(np.asarray(lse)[:, :, padding[0]] == -np.inf)  # Rows that see no key.
  seen = ~padding[0]
  np.testing.assert_allclose(np.asarray(lse)[:, :, seen], np.asarray(want)[:, :, seen], atol=2e-2)


@pytest.mark.parametrize("case", CASES)
def test_lowers_to_three_mosaic_gpu_kernels(case):
  """jit(value and grad) lowers for a GPU to three Mosaic GPU kernels (forward, dK/dV, dQ) and no
  Triton one."""
  (query, key, value), options = _inputs(case)
  # From JAX 0.11 GPU lowerings may read the target GPU off an abstract mesh when the default
  # device is a CPU (Triton's do).
  target = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=jax.sharding.AbstractDevice(
      device_kind="NVIDIA H100", num_cores=None, platform="gpu"))

  def loss(q, k, v):
    return flash_attention(q, k, v, backend="mosaic_gpu", **options).astype(jnp.float32).sum()

  shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (query, key, value)]
  with jax.sharding.use_abstract_mesh(target) if _JAX_VERSION >= (0, 11) else (
      contextlib.nullcontext()):
    text = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).trace(*shapes).lower(
        lowering_platforms=("cuda",)).as_text()
  assert text.count("custom_call @mosaic_gpu") == 3
  assert text.count("custom_call @__gpu$xla.gpu.triton") == 0


@pytest.mark.parametrize("block_k", [None, 64])
def test_padding_fits_every_kernel(block_k):
  """Queries pad to whole CTAs of the forward and dQ kernels (2 x 64), keys to whole ring slots
  and to whole CTAs of the dK/dV kernel (2 x 64), whatever block_k the call sets."""
  from gen_jax.kernels.flash_attention_mosaic_gpu import plan_blocks
  blocks = plan_blocks(96, 200, 300, None, block_k, False)
  assert blocks.padded_query_length == 256 and blocks.padded_key_length == 384
  assert blocks.padded_key_length % blocks.forward[1] == 0 and blocks.padded_head_dim == 128


def test_refuses_what_it_does_not_take_by_name():
  query = jnp.zeros((1, 64, 2, 64), jnp.float32)
  with pytest.raises(ValueError, match="float32"):
    flash_attention(query, query, query, causal=True, backend="mosaic_gpu")
  query = query.astype(jnp.bfloat16)
  with pytest.raises(ValueError, match="static .*query_offset"):
    flash_attention(query, query, query, causal=True, query_offset=jnp.int32(3),
                    backend="mosaic_gpu")
  with pytest.raises(ValueError, match="head_dim up to 128"):
    big = jnp.zeros((1, 64, 2, 192), jnp.bfloat16)
    flash_attention(big, big, big, causal=True, backend="mosaic_gpu")
  with pytest.raises(ValueError, match="result_dtype"):
    flash_attention_with_lse(query, query, query, causal=True, backend="mosaic_gpu",
                             result_dtype=jnp.float32)
  # A key/value ring of 2 x 2 x [256, 128] alone is more shared memory than a CTA has; at
  # head_dim 64 the same tiles fit (ptxas' report: 161 KiB).
  wide = jnp.zeros((1, 256, 2, 128), jnp.bfloat16)
  with pytest.raises(ValueError, match="block_k=256 at head_dim 128 needs 324 KiB"):
    flash_attention(wide, wide, wide, causal=True, backend="mosaic_gpu", block_k=256)
  from gen_jax.kernels.flash_attention_mosaic_gpu import plan_blocks
  assert plan_blocks(64, 256, 256, None, 256, False).forward == (64, 256)


def test_lowers_inside_shard_map_with_the_varying_axes_check_on():
  """In a data-parallel shard_map (how a sharded model calls it) the three kernels lower for a GPU
  with shard_map's varying-axes check on. (Run, the interpreter's host callbacks deadlock across
  8 CPU devices; the Triton kernels' sharded runs are tests/parallel's.)"""
  from jax.sharding import PartitionSpec as P
  target = jax.sharding.AbstractMesh((4,), ("data",), abstract_device=jax.sharding.AbstractDevice(
      device_kind="NVIDIA H100", num_cores=None, platform="gpu"))
  sharding = jax.sharding.NamedSharding(target, P("data"))
  shapes = [jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=sharding)
            for shape in ((4, 256, 4, 64), (4, 256, 2, 64), (4, 256, 2, 64))]
  sharded = jax.shard_map(
      lambda q, k, v: flash_attention(q, k, v, causal=True, sliding_window=100,
                                      backend="mosaic_gpu"),
      mesh=target, in_specs=(P("data"),) * 3, out_specs=P("data"))

  def loss(q, k, v):
    return sharded(q, k, v).astype(jnp.float32).sum()

  with jax.sharding.use_abstract_mesh(target):
    text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(*shapes).lower(
        lowering_platforms=("cuda",)).as_text()
  assert text.count("custom_call @mosaic_gpu") == 3
