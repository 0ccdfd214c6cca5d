"""FlashAttention for GPUs in Pallas' Triton dialect (Dao et al., 2022; FlashAttention-2, 2023).

The forward kernel holds a block of queries and walks the key blocks with an online softmax, saving
the log-sum-exp. The backward pass recomputes the probabilities from it in two kernels: one per key
block accumulating dK and dV over the query blocks of every query head that shares the kv head,
one per query block accumulating dQ over the key blocks. Splitting them costs a second
recomputation of the logits but needs no atomic adds into dQ. With config.dq_atomic the first
kernel instead adds each tile's dS K into a float32 dQ buffer with atomic adds (FlashAttention-2's
CUDA backward): 5 matmuls per tile pair instead of 7, one kernel instead of two, atomic traffic
and a run-dependent summation order in exchange.

Arrays keep the public layout [b, t, n, h]: Triton addresses the strided head axis directly, so
nothing is transposed, and a query head n reads kv head n // g, so keys and values are never
repeated. Softmax runs in base 2, with log2(e) folded into the logit scale, since exp2 is the
hardware instruction. Letters: b batch, t/s query/key length, n/k query/kv heads, g = n // k, h
head_dim.

A query offset known only at run time (config.mask.dynamic_offset) comes in as an int32 array of
shape (1,), one scalar load per program. The block ranges it shifts depend on the program id, so
the loops over key or query blocks have run-time bounds either way: a Python-int offset, compiled
in as a constant, saves that one load and a few integer operations per program, no more.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from gen_jax.kernels.flash_attention_tiles import (
  FlashConfig,
  KernelBlocks,
  inside_range,
  output_struct,
  result_type,
)
from gen_jax.kernels.flash_attention_tiles import dot as _dot
from gen_jax.kernels.flash_attention_tiles import dot_nt as _dot_nt
from gen_jax.kernels.flash_attention_tiles import dot_tn as _dot_tn

_LOG2_E = math.log2(math.e)
_MIN_BLOCK = 16  # tl.dot needs every matmul dimension to be at least 16.


def plan_blocks(head_dim: int, query_length: int, key_length: int, block_q: int | None,
                block_k: int | None, interpret: bool) -> KernelBlocks:
  """Tile sizes per kernel (block_q/block_k override all of them) and the padded lengths.

  The defaults are the usual FlashAttention-2 shapes for Hopper, not yet tuned here: a tall query
  block for the forward and dQ kernels, a tall key block for dK/dV, smaller ones past head_dim 128
  so the accumulators fit in registers.
  """
  del interpret  # The interpreter runs exactly the tiles the hardware would.
  for name, block in (("block_q", block_q), ("block_k", block_k)):
    if block is not None and (block < _MIN_BLOCK or block & (block - 1)):
      raise ValueError(f"{name} must be a power of two >= {_MIN_BLOCK} on GPU, got {block}")
  if head_dim <= 128:
    defaults = {"forward": (128, 64), "dkdv": (32, 128), "dq": (128, 32)}
  else:
    defaults = {"forward": (64, 32), "dkdv": (16, 64), "dq": (64, 16)}
  # Triton tiles are powers of two, so a short sequence gets one tile of the next power of two.
  fit_q = max(_MIN_BLOCK, pl.next_power_of_2(query_length))
  fit_k = max(_MIN_BLOCK, pl.next_power_of_2(key_length))
  blocks = {name: (min(block_q or bq, fit_q), min(block_k or bk, fit_k))
            for name, (bq, bk) in defaults.items()}
  largest_q = max(bq for bq, _ in blocks.values())
  largest_k = max(bk for _, bk in blocks.values())
  return KernelBlocks(**blocks, padded_query_length=-(-query_length // largest_q) * largest_q,
                      padded_key_length=-(-key_length // largest_k) * largest_k,
                      padded_head_dim=max(_MIN_BLOCK, pl.next_power_of_2(head_dim)))


def _compiler_params(config: FlashConfig, head_dim: int) -> plgpu.CompilerParams:
  """Triton settings of every kernel: the call's, else 4 warps up to head_dim 64 and 8 above (the
  accumulators' registers), two pipeline stages."""
  return plgpu.CompilerParams(num_warps=config.num_warps or (4 if head_dim <= 64 else 8),
                              num_stages=config.num_stages or 2)


# The name of the forward kernel reading one layer of stacked keys and values.
AT_LAYER_KERNEL = "flash_attention_at_layer"
# Programs the forward pass aims for when few query blocks meet many keys (decoding against a
# long cache: one query block per head): about two per SM of an H100 or H200 (132 SMs), so that
# every SM streams a part of the keys instead of a few SMs streaming all of them.
_TARGET_PROGRAMS = 256
_MIN_SPLIT_BLOCKS = 4  # Key blocks per part at least: each part writes a partial result.


def key_splits(programs: int, key_blocks: int, requested: int | None = None) -> int:
  """Parts the forward kernel splits each query block's keys into (Flash-Decoding: Dao et al.,
  2023): `requested` if given, else enough to bring `programs` (query blocks x batch x heads)
  to _TARGET_PROGRAMS with at least _MIN_SPLIT_BLOCKS of the `key_blocks` per part; 1 (no split)
  for training-sized grids."""
  if requested is not None:
    return requested
  if programs >= _TARGET_PROGRAMS:
    return 1
  return max(1, min(-(-_TARGET_PROGRAMS // programs), key_blocks // _MIN_SPLIT_BLOCKS))


def forward(query, key, value, query_ids, key_ids, offset, config: FlashConfig, layer=None):
  """query [b, t, n, h], key/value [b, s, k, h], ids [b, t]/[b, s] int32 or None (all padded),
  offset int32 [1] if config.mask.dynamic_offset else None. With `layer` (int32 [1]), key and
  value are stacks [layers, b, s, k, h] and the kernel reads that layer's in place (a decoding
  step in a layer loop over a stacked KV cache); the residuals are then for no backward pass.

  Returns out [b, t, n, h] (`result_type` of value) and the residuals `backward` takes. With
  `key_splits` parts, each program attends its query block to one part of the keys and writes a
  float32 partial output and log-sum-exp; XLA then merges the parts (a few [b, t, n, h] arrays:
  small where splitting pays, few queries against many keys).
  """
  b, t, n, h = query.shape
  s, num_kv_heads = key.shape[-3], key.shape[-2]
  group = n // num_kv_heads
  block_q, block_k = config.blocks.forward
  splits = key_splits(t // block_q * b * n, s // block_k, config.key_splits)
  q_block, query_spec, kv_spec, row_spec, ids_specs = _query_major_specs(
      t, s, h, block_q, group, config.mask.causal, query_ids)
  if layer is not None:  # Every layer's [s, h] block of the head: the kernel indexes the layer.
    kv_spec = pl.BlockSpec((key.shape[0], None, s, None, h), lambda i, bi, ni: (
        0, bi, 0, lax.div(ni, group), 0))
  inputs = (query, key, value, query_ids, key_ids, offset, layer)
  in_specs = [query_spec, kv_spec, kv_spec, *ids_specs, _scalar_spec(offset),
              _scalar_spec(layer)]
  call = functools.partial(
      pl.pallas_call, compiler_params=_compiler_params(config, h), interpret=config.interpret,
      # The at-layer variant is named apart: it reads one layer of its [layers, ...] operands
      # (benchmarks/hlo_summary.py's estimate counts it so), and remat never saves it.
      name="flash_attention_forward" if layer is None else AT_LAYER_KERNEL)
  if splits == 1:
    out, lse = call(
        functools.partial(_forward_kernel, config=config, q_block=q_block, splits=1),
        grid=(t // block_q, b, n), in_specs=in_specs, out_specs=[query_spec, row_spec],
        out_shape=[output_struct(query.shape, result_type(config, value), *inputs),
                   output_struct((b, n, t), jnp.float32, *inputs)],
    )(*inputs)
    return out, (query, key, value, query_ids, key_ids, offset, out, lse)
  # The part p is the grid's last axis; input blocks ignore it, outputs gain a leading axis.
  ignore_part = lambda spec: None if spec is None else pl.BlockSpec(
      spec.block_shape, lambda i, bi, ni, p, index_map=spec.index_map: index_map(i, bi, ni))
  parts, part_lse = call(
      functools.partial(_forward_kernel, config=config, q_block=q_block, splits=splits),
      grid=(t // block_q, b, n, splits), in_specs=[ignore_part(x) for x in in_specs],
      out_specs=[pl.BlockSpec((None, None, block_q, None, h),
                              lambda i, bi, ni, p: (p, bi, q_block(i), ni, 0)),
                 pl.BlockSpec((None, None, None, block_q),
                              lambda i, bi, ni, p: (p, bi, ni, q_block(i)))],
      out_shape=[output_struct((splits, *query.shape), jnp.float32, *inputs),
                 output_struct((splits, b, n, t), jnp.float32, *inputs)],
  )(*inputs)
  # Merge the true query rows only (a decoding step pads its one query to a 16-row block); the
  # padding rows see no key: out 0, lse +inf, as the unsplit kernel writes them.
  rows = config.mask.query_length
  out, lse = _merge_parts(parts[:, :, :rows], part_lse[..., :rows])
  out = jnp.pad(out, ((0, 0), (0, t - rows), (0, 0), (0, 0))).astype(result_type(config, value))
  lse = jnp.pad(lse, ((0, 0), (0, 0), (0, t - rows)), constant_values=jnp.inf)
  return out, (query, key, value, query_ids, key_ids, offset, out, lse)


def _merge_parts(parts, part_lse):
  """One softmax from parts over disjoint keys: parts [p, b, t, n, h] float32, part_lse
  [p, b, n, t] base 2 (+inf: the part saw no key). Returns (out [b, t, n, h] float32, lse
  [b, n, t] base 2, +inf for a row no part saw a key of), as one kernel over all keys gives."""
  seen = part_lse != jnp.inf
  top = jnp.max(jnp.where(seen, part_lse, -jnp.inf), axis=0)
  shift = jnp.where(top == -jnp.inf, 0.0, top)
  weights = jnp.where(seen, jnp.exp2(part_lse - shift), 0.0)  # [p, b, n, t]
  total = weights.sum(axis=0)
  out = jnp.einsum("pbnt,pbtnh->btnh", weights, parts)
  out = out / jnp.where(total == 0.0, 1.0, total).transpose(0, 2, 1)[..., None]
  return out, jnp.where(total == 0.0, jnp.inf, shift + jnp.log2(total))


def backward(residuals, d_out, config: FlashConfig):
  """Gradients (dq [b, t, n, h], dk, dv [b, s, k, h]) from `forward`'s residuals and d_out."""
  query, key, value, query_ids, key_ids, offset, out, lse = residuals
  delta = output_gradient_dot(out, d_out)
  outputs = dkdv(residuals, d_out, delta, config)
  dk, dv = outputs[:2]
  if config.dq_atomic:
    return (outputs[2] * config.scale).astype(result_type(config, query)), dk, dv
  b, t, n, h = query.shape
  s, num_kv_heads = key.shape[1], key.shape[2]
  group = n // num_kv_heads
  inputs = (query, key, value, d_out, lse, delta, query_ids, key_ids, offset)
  block_q, _ = config.blocks.dq
  q_block, query_spec, kv_spec, row_spec, ids_specs = _query_major_specs(
      t, s, h, block_q, group, config.mask.causal, query_ids)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, config=config, q_block=q_block),
      grid=(t // block_q, b, n),
      in_specs=[query_spec, kv_spec, kv_spec, query_spec, row_spec, row_spec, *ids_specs,
                _scalar_spec(offset)],
      out_specs=query_spec,
      out_shape=output_struct(query.shape, result_type(config, query), *inputs),
      compiler_params=_compiler_params(config, h),
      interpret=config.interpret,
      name="flash_attention_dq",
  )(*inputs)
  return dq, dk, dv


def output_gradient_dot(out, d_out):
  """delta [b, n, t] float32: delta_i = sum_j P_ij dP_ij = dO_i . O_i, one fused XLA reduction
  that every backward kernel reads."""
  return jnp.einsum("btnh,btnh->bnt", d_out.astype(jnp.float32), out.astype(jnp.float32))


def dkdv(residuals, d_out, delta, config: FlashConfig):
  """The dK/dV kernel: (dk, dv), and with config.dq_atomic dQ unscaled in float32 after them."""
  query, key, value, query_ids, key_ids, offset, out, lse = residuals
  b, t, n, h = query.shape
  s, num_kv_heads = key.shape[1], key.shape[2]
  group = n // num_kv_heads
  inputs = (query, key, value, d_out, lse, delta, query_ids, key_ids, offset)

  _, block_k = config.blocks.dkdv
  whole_queries = pl.BlockSpec((None, t, group, h), lambda j, bi, ki: (bi, 0, ki, 0))
  whole_rows = pl.BlockSpec((None, group, t), lambda j, bi, ki: (bi, ki, 0))
  key_block = pl.BlockSpec((None, block_k, None, h), lambda j, bi, ki: (bi, j, ki, 0))
  ids_specs = [None if query_ids is None else pl.BlockSpec((None, t), lambda j, bi, ki: (bi, 0)),
               None if key_ids is None else pl.BlockSpec((None, block_k),
                                                         lambda j, bi, ki: (bi, j))]
  # dq_atomic: a zeroed float32 dQ buffer goes in and comes back (aliased) with every key block's
  # atomic adds; all key-block programs of a kv head address the same [t, g, h] block of it.
  accumulator = (jnp.zeros(query.shape, jnp.float32),) if config.dq_atomic else ()
  dkdv_inputs = inputs + accumulator
  outputs = pl.pallas_call(
      functools.partial(_dkdv_kernel, config=config, group=group),
      grid=(s // block_k, b, num_kv_heads),
      in_specs=[whole_queries, key_block, key_block, whole_queries, whole_rows, whole_rows,
                *ids_specs, _scalar_spec(offset), *[whole_queries] * len(accumulator)],
      out_specs=[key_block, key_block, *[whole_queries] * len(accumulator)],
      out_shape=[output_struct(key.shape, result_type(config, key), *inputs),
                 output_struct(value.shape, result_type(config, value), *inputs),
                 *[output_struct(query.shape, jnp.float32, *inputs)] * len(accumulator)],
      input_output_aliases=({len(jax.tree.leaves(inputs)): 2} if accumulator else {}),
      compiler_params=_compiler_params(config, h),
      interpret=config.interpret,
      name="flash_attention_dkdv",
  )(*dkdv_inputs)
  return outputs


def natural_lse(lse):
  """`forward`'s log-sum-exp residual as [b, n, t] in natural log (+inf: the row saw no key)."""
  return lse / _LOG2_E


def residuals(query, key, value, query_ids, key_ids, offset, out, lse):
  """`backward`'s residuals from arrays in `forward`'s input layout, `out` [b, t, n, h] and a
  natural log-sum-exp [b, n, t] (+inf for empty rows): the backward pass of these keys against
  statistics of a larger attention they are part of (ring attention's)."""
  return query, key, value, query_ids, key_ids, offset, out, lse * _LOG2_E


def _query_major_specs(t, s, h, block_q, group, causal, query_ids):
  """The grid (query block, b, n) of the forward and dQ kernels: its query block order and the
  specs of query-like blocks [block_q, h], whole keys/values [s, h], per-query rows [block_q]
  and segment ids ([block_q] and [s], or None)."""
  num_q_blocks = t // block_q

  def q_block(program):
    # Causal query blocks near the end see the most keys; launching them first balances the SMs.
    return num_q_blocks - 1 - program if causal else program

  query_spec = pl.BlockSpec((None, block_q, None, h), lambda i, bi, ni: (bi, q_block(i), ni, 0))
  kv_spec = pl.BlockSpec((None, s, None, h), lambda i, bi, ni: (bi, 0, lax.div(ni, group), 0))
  row_spec = pl.BlockSpec((None, None, block_q), lambda i, bi, ni: (bi, ni, q_block(i)))
  ids_specs = [None, None] if query_ids is None else [
      pl.BlockSpec((None, block_q), lambda i, bi, ni: (bi, q_block(i))),
      pl.BlockSpec((None, s), lambda i, bi, ni: (bi, 0))]
  return q_block, query_spec, kv_spec, row_spec, ids_specs


def _scalar_spec(scalar):
  """A run-time scalar input [1] (the query offset, a layer index): the same one-element block
  for every program (or None without one)."""
  return None if scalar is None else pl.BlockSpec((1,), lambda *_: (0,))


def _load_scalar(scalar_ref):
  """A run-time scalar input's value, or None without one (a static query offset: the mask's)."""
  return None if scalar_ref is None else scalar_ref[0]


def _walk_blocks(step, block_range, unmasked_range, carry):
  """Runs step(j, carry, masked) for j in block_range, unmasked inside unmasked_range."""
  (first, end), (full_first, full_end) = block_range, unmasked_range
  carry = lax.fori_loop(first, full_first, functools.partial(step, masked=True), carry)
  carry = lax.fori_loop(full_first, full_end, functools.partial(step, masked=False), carry)
  return lax.fori_loop(full_end, end, functools.partial(step, masked=True), carry)


def _forward_kernel(q_ref, k_ref, v_ref, q_ids_ref, k_ids_ref, offset_ref, layer_ref, out_ref,
                    lse_ref, *, config: FlashConfig, q_block, splits: int):
  """q_ref, out_ref [block_q, h]; k_ref, v_ref [s, h], or [layers, s, h] with layer_ref [1] (the
  layer to read); q_ids_ref [block_q]; k_ids_ref [s]; offset_ref [1] or None; lse_ref [block_q],
  base 2. With splits > 1 the program attends to part pl.program_id(3) of the query block's key
  blocks (consecutive, equal but for the last)."""
  mask = config.mask
  block_q, block_k = config.blocks.forward
  i = q_block(pl.program_id(0))
  offset = _load_scalar(offset_ref)
  layer = _load_scalar(layer_ref)
  # One indexer per load (Triton's lowering takes no view of a view): the layer goes in it.
  rows_of = (lambda ref, rows: ref[rows, :]) if layer is None else (
      lambda ref, rows: ref[layer, rows, :])
  q = q_ref[...]
  q_row = i * block_q + jnp.arange(block_q)[:, None]
  q_ids = None if q_ids_ref is None else q_ids_ref[...][:, None]
  logit_scale = config.scale * _LOG2_E

  def step(j, carry, masked):
    acc, row_max, row_sum = carry
    keys = pl.ds(j * block_k, block_k)
    logits = _dot_nt(q, rows_of(k_ref, keys)) * logit_scale  # [block_q, block_k]
    if masked:
      k_pos = j * block_k + jnp.arange(block_k)[None, :]
      k_ids = None if k_ids_ref is None else k_ids_ref[keys][None, :]
      logits = jnp.where(mask.visible(q_row, k_pos, q_ids, k_ids, offset), logits, -jnp.inf)
    new_max = jnp.maximum(row_max, logits.max(axis=1))
    # Rows that have seen no visible key keep max -inf; shifting them by 0 keeps exp2 at 0, not NaN.
    shift = jnp.where(new_max == -jnp.inf, 0.0, new_max)
    correction = jnp.exp2(row_max - shift)
    probs = jnp.exp2(logits - shift[:, None])
    row_sum = row_sum * correction + probs.sum(axis=1)
    values = rows_of(v_ref, keys)
    acc = acc * correction[:, None] + _dot(probs.astype(values.dtype), values)
    return acc, new_max, row_sum

  carry = (jnp.zeros(q.shape, jnp.float32), jnp.full((block_q,), -jnp.inf, jnp.float32),
           jnp.zeros((block_q,), jnp.float32))
  blocks = mask.key_blocks(i, block_q, block_k, offset)
  unmasked = mask.unmasked_key_blocks(i, block_q, block_k, offset)
  if splits > 1:
    first, end = blocks
    per_part = lax.div(end - first + splits - 1, splits)
    part_first = jnp.minimum(first + pl.program_id(3) * per_part, end)
    blocks = (part_first, jnp.minimum(part_first + per_part, end))
    unmasked = inside_range(*unmasked, *blocks)
  acc, row_max, row_sum = _walk_blocks(step, blocks, unmasked, carry)
  # A row that sees no key outputs 0; its log-sum-exp of +inf makes every recomputed probability 0.
  empty = row_sum == 0.0
  out_ref[...] = (acc / jnp.where(empty, 1.0, row_sum)[:, None]).astype(out_ref.dtype)
  lse_ref[...] = jnp.where(empty, jnp.inf, row_max + jnp.log2(row_sum))


def _dkdv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_ids_ref, k_ids_ref,
                 offset_ref, *refs, config: FlashConfig, group: int):
  """q_ref, do_ref [t, g, h]; lse_ref, delta_ref [g, t]; q_ids_ref [t]; k_ids_ref [block_k];
  offset_ref [1] or None; refs: (dk_ref, dv_ref [block_k, h]), or with config.dq_atomic
  (the zeroed dQ input, dk_ref, dv_ref, dq_ref [t, g, h] float32: the same buffer, aliased).

  Tiles are transposed (keys along rows), so dV += P^T dO and dK += dS^T Q need no transposes.
  """
  dk_ref, dv_ref, dq_ref = refs[1:] if config.dq_atomic else (*refs, None)
  mask = config.mask
  block_q, block_k = config.blocks.dkdv
  j = pl.program_id(0)
  offset = _load_scalar(offset_ref)
  k, v = k_ref[...], v_ref[...]
  k_pos = j * block_k + jnp.arange(block_k)[:, None]
  k_ids = None if k_ids_ref is None else k_ids_ref[...][:, None]
  logit_scale = config.scale * _LOG2_E

  def step(i, carry, head, masked):
    dk, dv = carry
    rows = pl.ds(i * block_q, block_q)
    q, do = q_ref[rows, head, :], do_ref[rows, head, :]
    logits_t = _dot_nt(k, q) * logit_scale  # [block_k, block_q]
    if masked:
      q_row = i * block_q + jnp.arange(block_q)[None, :]
      q_ids = None if q_ids_ref is None else q_ids_ref[rows][None, :]
      logits_t = jnp.where(mask.visible(q_row, k_pos, q_ids, k_ids, offset), logits_t, -jnp.inf)
    probs_t = jnp.exp2(logits_t - lse_ref[head, rows][None, :])
    dv = dv + _dot(probs_t.astype(do.dtype), do)
    dlogits_t = probs_t * (_dot_nt(v, do) - delta_ref[head, rows][None, :])
    dk = dk + _dot(dlogits_t.astype(q.dtype), q)
    if dq_ref is not None:  # This tile's share of dQ = dS K (scaled once, after the kernel).
      plgpu.atomic_add(dq_ref, (rows, head, slice(None)), _dot_tn(dlogits_t.astype(k.dtype), k))
    return dk, dv

  block_range = mask.query_blocks(j, block_q, block_k, offset)
  unmasked_range = mask.unmasked_query_blocks(j, block_q, block_k, offset)

  def head_step(head, carry):  # dK and dV sum over the query heads sharing this kv head.
    return _walk_blocks(functools.partial(step, head=head), block_range, unmasked_range, carry)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, group, head_step, (zeros, zeros))
  dk_ref[...] = (dk * config.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_ids_ref, k_ids_ref, offset_ref,
               dq_ref, *, config: FlashConfig, q_block):
  """q_ref, do_ref, dq_ref [block_q, h]; k_ref, v_ref [s, h]; lse_ref, delta_ref [block_q];
  q_ids_ref [block_q]; k_ids_ref [s]; offset_ref [1] or None."""
  mask = config.mask
  block_q, block_k = config.blocks.dq
  i = q_block(pl.program_id(0))
  offset = _load_scalar(offset_ref)
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]
  q_row = i * block_q + jnp.arange(block_q)[:, None]
  q_ids = None if q_ids_ref is None else q_ids_ref[...][:, None]
  logit_scale = config.scale * _LOG2_E

  def step(j, dq, masked):
    keys = pl.ds(j * block_k, block_k)
    k, v = k_ref[keys, :], v_ref[keys, :]
    logits = _dot_nt(q, k) * logit_scale  # [block_q, block_k]
    if masked:
      k_pos = j * block_k + jnp.arange(block_k)[None, :]
      k_ids = None if k_ids_ref is None else k_ids_ref[keys][None, :]
      logits = jnp.where(mask.visible(q_row, k_pos, q_ids, k_ids, offset), logits, -jnp.inf)
    probs = jnp.exp2(logits - lse)
    dlogits = probs * (_dot_nt(do, v) - delta)
    return dq + _dot(dlogits.astype(k.dtype), k)

  dq = _walk_blocks(step, mask.key_blocks(i, block_q, block_k, offset),
                    mask.unmasked_key_blocks(i, block_q, block_k, offset),
                    jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * config.scale).astype(dq_ref.dtype)
