"""Flash-attention kernels (GPU and TPU, Pallas interpreter) against ops.attention's XLA path.

Outputs and gradients wrt query, key and value, on lengths that are no multiple of the (small)
tiles, every grouped-query ratio of 4 heads, causal and not, sliding windows, packed documents with
padding and rows that see no key at all; query offsets, static and traced, alone and in shard_map
(sequence parallelism).

GEN_JAX_COMPILED_KERNELS=1 on a GPU (or TPU) machine runs that backend's kernels compiled for the
hardware instead of interpreted, against the same reference at tolerances widened for the matrix
units' float32 mode (TF32 on a GPU: about 3e-4 relative): `python -m pytest tests/kernels -k gpu`
there, the kernel_tests stage of benchmarks/device_checks.sh. On a CPU the variable changes nothing.
"""
import dataclasses
import contextlib
import itertools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from gen_jax import ops
from gen_jax.kernels import flash_attention
from gen_jax.kernels.flash_attention_tiles import TileMask

# The backends that take every dtype and option; mosaic_gpu (Hopper, bf16/fp16, its forward
# only) has tests/kernels/test_flash_attention_mosaic_gpu.py.
FLASH_BACKENDS = ("gpu", "tpu")
# Small tiles, so every test walks several query and key blocks (Triton's dot needs 16).
SMALL_BLOCKS = {"gpu": 16, "tpu": 8}
COMPILED = os.environ.get("GEN_JAX_COMPILED_KERNELS") == "1"


def _interpret(backend: str) -> bool:
  """Interpret unless GEN_JAX_COMPILED_KERNELS=1 and this machine is the backend's hardware."""
  return not (COMPILED and jax.default_backend() == backend)


def _qkv(seed, b, t, s, n, k, h, dtype=jnp.float32):
  r = np.random.default_rng(seed)
  return tuple(jnp.asarray(r.normal(size=shape), dtype)
               for shape in ((b, t, n, h), (b, s, k, h), (b, s, k, h)))


def _jit_output_and_grads(attention_fn):
  """f(query, key, value, *args): attention_fn's output and its vjp (dq, dk, dv) with a fixed
  random cotangent, one jitted function (args, e.g. a query offset, are traced, not differentiated)."""

  def run(query, key, value, *args):
    cotangent = jnp.asarray(np.random.default_rng(99).normal(size=query.shape), query.dtype)
    out, vjp = jax.vjp(lambda q, k, v: attention_fn(q, k, v, *args), query, key, value)
    return (out, *vjp(cotangent))

  run = jax.jit(run)

  def call(query, key, value, *args):
    results = run(query, key, value, *args)
    assert [x.dtype for x in results] == [value.dtype, query.dtype, key.dtype, value.dtype]
    return [np.asarray(x, np.float32) for x in results]

  return call


def _output_and_grads(attention_fn, query, key, value):
  """attention_fn's output and its vjp (dq, dk, dv) with a fixed random cotangent, jitted."""
  return _jit_output_and_grads(attention_fn)(query, key, value)


def _assert_all_close(flash, reference, atol, rtol=1e-5, where=""):
  if COMPILED and jax.default_backend() != "cpu":  # Matrix units round float32 operands (TF32).
    atol, rtol = max(atol, 2e-3), max(rtol, 2e-3)
  for name, got, want in zip(("out", "dq", "dk", "dv"), flash, reference):
    assert np.isfinite(got).all(), name + where
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol, err_msg=name + where)


def _check_against_reference(backend, query, key, value, *, atol, rtol=1e-5, blocks=True,
                             kernel_options=None, **options):
  """Asserts flash == reference for the output and all three gradients; returns flash's.
  kernel_options go to the kernel alone (settings the reference does not have)."""
  block = SMALL_BLOCKS[backend] if blocks else None
  flash = _output_and_grads(
      lambda q, k, v: flash_attention(q, k, v, backend=backend, block_q=block, block_k=block,
                                      interpret=_interpret(backend), **(kernel_options or {}),
                                      **options), query, key, value)
  reference = _output_and_grads(
      lambda q, k, v: ops.attention(q, k, v, impl="xla", **options), query, key, value)
  _assert_all_close(flash, reference, atol, rtol)
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


@pytest.mark.parametrize("shape", [*SHAPES, "packed"])
def test_gpu_dq_by_atomic_adds_matches_reference(shape):
  """dq_atomic: the dK/dV kernel adds each tile's dQ into one float32 buffer (FlashAttention-2's
  CUDA backward) instead of a separate dQ kernel; every shape, and packed documents with padding
  and empty rows, against the reference."""
  if shape == "packed":
    b, t, s, n, k, h, options = 2, 40, 40, 4, 2, 8, {"causal": True, "segment_ids": PACKED}
  else:
    b, t, s, n, k, h, options = SHAPES[shape]
  _check_against_reference("gpu", *_qkv(3, b, t, s, n, k, h), atol=2e-5,
                           kernel_options={"dq_atomic": True}, **options)


# Decoding-like calls (a few queries against many keys) with the keys split into parts
# (Flash-Decoding): a dynamic or static offset, a window that leaves most parts empty, packed
# key documents with padding, GQA; lengths that are not multiples of the blocks.
SPLIT_CASES = {  # name: (b, t, s, n, k, h, options)
    "one_query_cache": (2, 1, 150, 4, 2, 8, {"causal": True, "query_offset": 149}),
    "few_queries_cache": (1, 5, 131, 4, 1, 16, {"causal": True, "query_offset": 126}),
    "window_empty_parts": (1, 3, 160, 2, 2, 8, {"causal": True, "query_offset": 150,
                                                "sliding_window": 20}),
    "bidirectional": (1, 2, 97, 4, 4, 8, {"causal": False}),
}


@pytest.mark.parametrize("case", SPLIT_CASES)
@pytest.mark.parametrize("splits", [None, 2, 3, 7])
def test_gpu_forward_split_over_the_keys_matches_reference(case, splits):
  b, t, s, n, k, h, options = SPLIT_CASES[case]
  _check_against_reference("gpu", *_qkv(13, b, t, s, n, k, h), atol=2e-5,
                           kernel_options={"key_splits": splits}, **options)


def test_gpu_forward_split_with_packed_documents_and_a_traced_offset():
  query, key, value = _qkv(14, 2, 4, 120, 4, 2, 8)
  key_ids = np.array([[1] * 50 + [2] * 60 + [0] * 10, [3] * 100 + [0] * 20])
  query_ids = np.array([[2] * 4, [3] * 2 + [0] * 2])
  options = dict(causal=True, segment_ids=query_ids, key_segment_ids=key_ids)
  run = lambda impl_fn: _jit_output_and_grads(impl_fn)(query, key, value, jnp.int32(106))
  flash = run(lambda q, k, v, o: flash_attention(
      q, k, v, query_offset=o, backend="gpu", block_q=16, block_k=16, key_splits=3,
      interpret=_interpret("gpu"), **options))
  reference = run(lambda q, k, v, o: ops.attention(q, k, v, impl="xla", query_offset=o,
                                                   **options))
  _assert_all_close(flash, reference, atol=2e-5)


def test_key_splits_fill_the_gpu_for_small_grids_only():
  from gen_jax.kernels.flash_attention_gpu import key_splits
  assert key_splits(programs=32, key_blocks=64) == 8  # 1 query block x 32 heads: 256 programs.
  assert key_splits(programs=32, key_blocks=12) == 3  # At least 4 key blocks a part.
  assert key_splits(programs=32, key_blocks=5) == 1
  assert key_splits(programs=512, key_blocks=64) == 1  # Training grids are full already.
  assert key_splits(programs=512, key_blocks=64, requested=4) == 4


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


# 13 queries among 37 keys (GQA 2:1): offsets 0 (queries first), 11 (a middle, not a multiple of any
# tile) and 24 = s - t (decoding after a prefix: the last query sees every key).
OFFSET_SHAPE = (1, 13, 37, 2, 1, 8)
OFFSETS = (0, 11, 24)
OFFSET_OPTIONS = {
    "causal": {"causal": True},
    "causal_window": {"causal": True, "sliding_window": 9},
    # Query and key documents, with padding (0) at the end of both.
    "causal_segments": {"causal": True, "segment_ids": np.array([[1] * 5 + [2] * 6 + [0] * 2]),
                        "key_segment_ids": np.array([[1] * 15 + [2] * 17 + [0] * 5])},
}


@pytest.mark.parametrize("backend", FLASH_BACKENDS)
def test_float32_results_of_bfloat16_inputs_skip_the_last_rounding(backend):
  """result_dtype=float32 (ring attention's blocks): out, and dq, dk, dv from the backward, come
  back in float32, nearer the float32 reference than the bfloat16 results are."""
  from gen_jax.kernels import flash_attention_backward, flash_attention_with_lse
  query, key, value = _qkv(11, 2, 40, 40, 4, 2, 16, jnp.bfloat16)
  d_out = jnp.asarray(np.random.default_rng(12).normal(size=query.shape), jnp.float32)
  options = dict(causal=True, backend=backend, block_q=SMALL_BLOCKS[backend],
                 block_k=SMALL_BLOCKS[backend], interpret=_interpret(backend))
  f32 = lambda x: jnp.asarray(x, jnp.float32)

  def reference(q, k, v):
    return ops.attention(q, k, v, causal=True, impl="xla")
  want_out, vjp = jax.vjp(reference, f32(query), f32(key), f32(value))
  want = [want_out, *vjp(d_out)]
  errors = {}
  for dtype in (None, jnp.float32):
    out, lse = flash_attention_with_lse(query, key, value, result_dtype=dtype, **options)
    grads = flash_attention_backward(query, key, value, out, lse, d_out, result_dtype=dtype,
                                     **options)
    expected = [jnp.bfloat16] * 4 if dtype is None else [jnp.float32] * 4
    assert [x.dtype for x in (out, *grads)] == expected
    errors[dtype] = [float(jnp.abs(f32(got) - w).max()) for got, w in zip((out, *grads), want)]
  for rounded, unrounded in zip(errors[None], errors[jnp.float32]):
    assert unrounded < rounded


@pytest.mark.parametrize("backend", FLASH_BACKENDS)
@pytest.mark.parametrize("options", OFFSET_OPTIONS)
def test_traced_query_offset_matches_reference(backend, options):
  """One jitted function, the offset a traced int32 argument, matches the reference at every
  offset without retracing."""
  options = OFFSET_OPTIONS[options]
  block = SMALL_BLOCKS[backend]
  traces = []

  def flash_fn(q, k, v, offset):
    traces.append(offset)
    return flash_attention(q, k, v, query_offset=offset, backend=backend, block_q=block,
                           block_k=block, interpret=_interpret(backend), **options)

  flash = _jit_output_and_grads(flash_fn)
  reference = _jit_output_and_grads(
      lambda q, k, v, offset: ops.attention(q, k, v, impl="xla", query_offset=offset, **options))
  query, key, value = _qkv(5, *OFFSET_SHAPE)
  for offset in OFFSETS:
    offset = jnp.int32(offset)
    _assert_all_close(flash(query, key, value, offset), reference(query, key, value, offset),
                      atol=2e-5, where=f" at offset {offset}")
  assert len(traces) == 1


@pytest.mark.parametrize("backend", FLASH_BACKENDS)
@pytest.mark.parametrize("offset", OFFSETS[1:])  # Offset 0 is every other test's default.
def test_static_query_offset_matches_reference(backend, offset):
  """A Python int offset is compiled into the kernels (here with a window, middle and decoding)."""
  _check_against_reference(backend, *_qkv(6, *OFFSET_SHAPE), atol=2e-5, causal=True,
                           sliding_window=20, query_offset=offset)


def _sequence_parallel(backend, causal=True, mesh=None, **options):
  """flash_attention in shard_map over 4 devices (or `mesh`'s): each holds a quarter of the queries
  (and of the keys, which it all-gathers), so its offset is axis_index * t_local, a run-time
  value."""
  mesh = mesh or Mesh(np.array(jax.devices()[:4]), ("sequence",))

  def per_device(q, k, v):
    k, v = (jax.lax.all_gather(x, "sequence", axis=1, tiled=True) for x in (k, v))
    offset = jax.lax.axis_index("sequence") * q.shape[1]
    return flash_attention(q, k, v, causal=causal, query_offset=offset, backend=backend, **options)

  spec = P(None, "sequence")
  # The Pallas interpreter of jax 0.10 fails shard_map's varying-axes check inside kernel bodies
  # (a varying block sliced at an invariant grid index), so interpreted runs turn the check off;
  # the kernels compiled for hardware pass it (test_lowers_for_hardware_in_shard_map).
  return jax.shard_map(per_device, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                       check_vma=not options.get("interpret", False))


@pytest.mark.parametrize("backend", FLASH_BACKENDS)
def test_sequence_parallel_in_shard_map(backend):
  """Sharded queries with all-gathered keys: output and gradients equal unsharded attention."""
  block = SMALL_BLOCKS[backend]
  query, key, value = _qkv(7, 2, 44, 44, 4, 2, 8)  # 11 queries per device: padded tiles.
  sharded = _sequence_parallel(backend, block_q=block, block_k=block,
                               interpret=_interpret(backend))
  reference = _output_and_grads(
      lambda q, k, v: ops.attention(q, k, v, causal=True, impl="xla"), query, key, value)
  _assert_all_close(_output_and_grads(sharded, query, key, value), reference, atol=2e-5)


@pytest.mark.parametrize("backend,platform,call", [
    ("gpu", "cuda", "__gpu$xla.gpu.triton"), ("tpu", "tpu", "tpu_custom_call")])
def test_lowers_for_hardware_in_shard_map(backend, platform, call):
  """The three kernels, with a run-time offset in shard_map (varying-axes check on), lower to
  Triton and Mosaic custom calls: what the interpreter cannot check, short of compiling them."""
  # From jax 0.11 the Triton lowering reads the target GPU off the abstract mesh when the default
  # device is not one (a CPU here): an abstract mesh of H100s, as the targets name, with
  # the inputs sharded on it as shard_map's in_specs say.
  target = sharding = None
  if backend == "gpu":
    target = jax.sharding.AbstractMesh((4,), ("sequence",), abstract_device=(
        jax.sharding.AbstractDevice(device_kind="NVIDIA H100", num_cores=None, platform="gpu")))
    sharding = jax.sharding.NamedSharding(target, P(None, "sequence"))
  query, key, value = (jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=sharding)
                       for shape in ((1, 1024, 2, 64), (1, 1024, 1, 64), (1, 1024, 1, 64)))
  sharded = _sequence_parallel(backend, mesh=target, block_q=128, block_k=128,
                               sliding_window=300)

  def output_and_grads(q, k, v):
    out, vjp = jax.vjp(sharded, q, k, v)
    return out, vjp(out)

  with jax.sharding.use_abstract_mesh(target) if target else contextlib.nullcontext():
    lowered = jax.jit(output_and_grads).trace(query, key, value).lower(
        lowering_platforms=(platform,))
  assert lowered.as_text().count(f"custom_call @{call}") == 3


@pytest.mark.parametrize("splits", [None, 1, 3])
def test_gpu_forward_at_one_layer_of_stacks_equals_the_layers_slice(splits):
  """flash_attention_at_layer against flash_attention on the slice: a decoding step (static and
  traced layer, traced offset, key documents with padding, GQA), compiled on a GPU with
  GEN_JAX_COMPILED_KERNELS=1 (the kernel_tests device stage), interpreted elsewhere."""
  from gen_jax.kernels import flash_attention_at_layer
  r = np.random.default_rng(21)
  stacks = [jnp.asarray(r.normal(size=(3, 2, 128, 2, 16)), jnp.float32) for _ in range(2)]
  query = jnp.asarray(r.normal(size=(2, 1, 4, 16)), jnp.float32)
  key_ids = np.ones((2, 128), np.int32)
  key_ids[1, 90:] = 0
  options = dict(causal=True, segment_ids=np.ones((2, 1), np.int32), key_segment_ids=key_ids,
                 block_q=16, block_k=16, interpret=_interpret("gpu"))
  for layer in (1, jnp.int32(2)):
    got = jax.jit(lambda q, k, v, o, layer=layer: flash_attention_at_layer(
        q, k, v, layer, query_offset=o, key_splits=splits, **options))(query, *stacks,
                                                                         jnp.int32(88))
    want = flash_attention(query, stacks[0][int(layer)], stacks[1][int(layer)],
                           query_offset=jnp.int32(88), **options)
    _assert_all_close([np.asarray(got)], [np.asarray(want)], atol=2e-5)


def test_the_kernel_reading_one_layer_of_a_stacked_cache_lowers_for_triton_and_refuses_grads():
  """flash_attention_at_layer: a decoding step's query against layer i of [layers, b, s, k, h]
  stacks, with the keys split over programs: one Triton call, which takes the whole stacks."""
  from gen_jax.kernels import flash_attention_at_layer
  target = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=jax.sharding.AbstractDevice(
      device_kind="NVIDIA H100", num_cores=None, platform="gpu"))
  step = lambda q, k, v, layer, offset: flash_attention_at_layer(
      q, k, v, layer, causal=True, query_offset=offset, backend="gpu")
  shapes = (jax.ShapeDtypeStruct((1, 1, 4, 64), jnp.bfloat16),
            *[jax.ShapeDtypeStruct((6, 1, 4096, 2, 64), jnp.bfloat16)] * 2,
            jax.ShapeDtypeStruct((), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32))
  with jax.sharding.use_abstract_mesh(target):
    text = jax.jit(step).trace(*shapes).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("custom_call @__gpu$xla.gpu.triton") == 1
  operands = re.search(r"custom_call @__gpu\$xla\.gpu\.triton\(([^)]*)\)", text).group(1)
  assert "%arg1" in operands and "%arg2" in operands  # The stacks themselves, not slices.
  q, k = _qkv(0, 1, 1, 32, 2, 1, 16)[:2]
  stack = jnp.stack([k, k])
  with pytest.raises(NotImplementedError, match="a decoding step's forward pass"):
    jax.grad(lambda q: flash_attention_at_layer(q, stack, stack, 1, causal=True, query_offset=31,
                                                interpret=True).sum())(q)


def test_triton_settings_reach_the_gpu_kernels_and_the_tpu_backend_refuses_them():
  """num_warps / num_stages (for tuning on hardware, benchmarks/attention.py) reach every Triton
  kernel of the forward and backward pass; the defaults are 4 warps at head_dim 64, 2 stages."""
  query, key = (jax.ShapeDtypeStruct(shape, jnp.bfloat16)
                for shape in ((1, 256, 2, 64), (1, 256, 1, 64)))
  target = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=jax.sharding.AbstractDevice(
      device_kind="NVIDIA H100", num_cores=None, platform="gpu"))

  def lowered_text(**settings):
    def output_and_grads(q, k, v):
      out, vjp = jax.vjp(lambda q, k, v: flash_attention(q, k, v, causal=True, backend="gpu",
                                                         **settings), q, k, v)
      return out, vjp(out)
    with jax.sharding.use_abstract_mesh(target):
      return jax.jit(output_and_grads).trace(query, key, key).lower(
          lowering_platforms=("cuda",)).as_text()

  default, tuned = lowered_text(), lowered_text(num_warps=2, num_stages=5)
  assert default.count("num_warps = 4 : i32") == default.count("num_stages = 2 : i32") == 3
  assert tuned.count("num_warps = 2 : i32") == tuned.count("num_stages = 5 : i32") == 3
  # dq_atomic lowers for Triton too, with one backward kernel fewer (forward and dK/dV/dQ).
  assert lowered_text(dq_atomic=True).count("num_warps = 4 : i32") == 2
  q, k, v = _qkv(0, 1, 16, 16, 2, 1, 8)
  for backend in ("tpu", "mosaic_gpu"):
    for setting in ({"num_warps": 4}, {"key_splits": 2}):
      with pytest.raises(ValueError, match="num_stages and key_splits are settings of the 'gpu'"):
        flash_attention(q, k, v, causal=True, backend=backend, interpret=True, **setting)
  with pytest.raises(ValueError, match="dq_atomic is a setting of the GPU backends"):
    flash_attention(q, k, v, causal=True, backend="tpu", interpret=True, dq_atomic=True)
  with pytest.raises(ValueError, match="num_stages must be positive, got 0"):
    flash_attention(q, k, v, causal=True, interpret=True, num_stages=0)
  with pytest.raises(ValueError, match="key_splits must be positive, got 0"):
    flash_attention(q, k, v, causal=True, interpret=True, key_splits=0)


MASKS = [TileMask(causal=c, sliding_window=w, query_length=t, key_length=s, has_segments=False)
         for c, w, (t, s) in itertools.product((True, False), (None, 1, 5, 20),
                                              ((37, 37), (19, 45), (45, 21), (1, 29)))]


# Offsets that only the causal and windowed masks feel: negative (keys before any query), inside
# the keys, and past them (every key in the past). A None query_offset reads the offset at run time.
OFFSET_MASKS = [
    TileMask(causal=c, sliding_window=w, query_length=t, key_length=s, has_segments=False,
             query_offset=offset)
    for (c, w), (t, s), offset in itertools.product(
        ((True, None), (True, 1), (True, 5), (False, 1), (False, 5)), ((19, 45), (45, 21)),
        (-7, 3, 26, 60))]


@pytest.mark.parametrize("mask", MASKS + OFFSET_MASKS, ids=str)
@pytest.mark.parametrize("block_q,block_k", [(8, 8), (16, 8), (8, 32)])
def test_tile_ranges_are_exactly_the_tiles_that_need_work(mask, block_q, block_k):
  """Skipped tiles see nothing and unmasked tiles see everything: speed and correctness."""
  q_row = np.arange(-(-mask.query_length // block_q) * block_q)[:, None]
  k_pos = np.arange(-(-mask.key_length // block_k) * block_k)[None, :]
  visible = np.asarray(mask.visible(q_row, k_pos))
  t, s = mask.query_length, mask.key_length
  assert not visible[t:].any() and not visible[:, s:].any()  # Padding, whatever the offset.
  reference = ops.attention_mask(t, s, causal=mask.causal, query_offset=mask.query_offset,
                                 sliding_window=mask.sliding_window)
  if reference is not None:
    np.testing.assert_array_equal(visible[:t, :s], reference[0])
  _check_tile_ranges(mask, visible, block_q, block_k)
  if mask.query_offset:  # The same ranges from an offset given at run time.
    _check_tile_ranges(dataclasses.replace(mask, query_offset=None), visible, block_q, block_k,
                       offset=jnp.int32(mask.query_offset))


def _check_tile_ranges(mask, visible, block_q, block_k, offset=None):
  num_q_blocks, num_k_blocks = visible.shape[0] // block_q, visible.shape[1] // block_k
  tiles = visible.reshape(num_q_blocks, block_q, num_k_blocks, block_k).transpose(0, 2, 1, 3)
  any_visible, all_visible = tiles.any(axis=(2, 3)), tiles.all(axis=(2, 3))

  def as_set(block_range):
    first, end = (int(x) for x in block_range)
    return set(range(first, end))

  for i in range(num_q_blocks):
    assert (as_set(mask.key_blocks(i, block_q, block_k, offset)) ==
            set(np.flatnonzero(any_visible[i])))
    assert (as_set(mask.unmasked_key_blocks(i, block_q, block_k, offset)) ==
            set(np.flatnonzero(all_visible[i])))
  for j in range(num_k_blocks):
    assert (as_set(mask.query_blocks(j, block_q, block_k, offset)) ==
            set(np.flatnonzero(any_visible[:, j])))
    assert (as_set(mask.unmasked_query_blocks(j, block_q, block_k, offset)) ==
            set(np.flatnonzero(all_visible[:, j])))


@pytest.mark.parametrize("changes,match", [
    ({"backend": "cuda"}, "backend 'cuda'"),
    ({"key": jnp.zeros((1, 8, 3, 8)), "value": jnp.zeros((1, 8, 3, 8))}, "multiple of kv heads"),
    ({"key": jnp.zeros((1, 8, 2, 4))}, "key .* and value .* same shape"),
    ({"key": jnp.zeros((1, 8, 2, 4)), "value": jnp.zeros((1, 8, 2, 4))}, "head_dim"),
    ({"value": jnp.zeros((1, 8, 2, 8), jnp.bfloat16)}, "share a dtype"),
    ({"sliding_window": 0}, "sliding_window"),
    ({"sliding_window": 2.5}, "sliding_window"),
    ({"query_offset": 1.0}, "query_offset"),
    ({"query_offset": jnp.zeros((1,), jnp.int32)}, "query_offset must be"),
    ({"query_offset": jnp.float32(3)}, "query_offset must be"),
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
