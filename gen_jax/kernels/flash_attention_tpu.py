"""FlashAttention for TPUs in Pallas' Mosaic dialect (Dao et al., 2022; FlashAttention-2, 2023).

Each kernel's grid ends in the axis it reduces over, walked in order ("arbitrary") while the others
run in parallel, and keeps its running sums in VMEM scratch that lives across that axis: the
forward pass walks key blocks (output, row max and row sum), the dK/dV kernel walks query blocks
of every query head sharing the kv head (dK, dV), the dQ kernel walks key blocks (dQ). A skipped
tile's index map points at a block fetched anyway, so the pipeline copies nothing for it.

Arrays are transposed to [b, n, t, h] so a block's last two dimensions are (length, head_dim), the
(sublane, lane) tiling Mosaic wants. The log-sum-exp, the row sums dO.O and the query segment ids
lie along lanes ([b, n, 1, t]), so the backward kernels work on transposed tiles, keys along rows:
their per-query statistics broadcast over sublanes without any relayout. Letters: b batch, t/s
query/key length, n/k query/kv heads, g = n // k, h head_dim.

A query offset known only at run time (config.mask.dynamic_offset) is a scalar-prefetch operand
(`PrefetchScalarGridSpec(num_scalar_prefetch=1)`): copied to SMEM before the grid starts, it
reaches the index maps as well as the kernel body. The index maps need it: they clamp a skipped
tile onto a block that is fetched anyway, and which tiles are skipped depends on the offset. An
SMEM input would reach only the body, so every skipped tile would cost a DMA again. A Python-int
offset stays a compile-time constant with num_scalar_prefetch=0, as before offsets existed. The
tile predicates depend on the program ids, so they are run-time scalar-unit integer arithmetic
per grid step either way; a run-time offset adds one SMEM load to them.
"""
import functools

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from gen_jax.kernels.flash_attention_tiles import (
  FlashConfig,
  KernelBlocks,
  clamp_block,
  output_struct,
  result_type,
)
from gen_jax.kernels.flash_attention_tiles import dot as _dot
from gen_jax.kernels.flash_attention_tiles import dot_nt as _dot_nt

_LANES = 128
_SUBLANES = 8
_DEFAULT_BLOCK = 512  # Large tiles amortize the ~0.35us per grid step; not yet tuned here.
_SEMANTICS = ("parallel", "parallel", "parallel", "arbitrary")


def plan_blocks(head_dim: int, query_length: int, key_length: int, block_q: int | None,
                block_k: int | None, interpret: bool) -> KernelBlocks:
  """One tile size for all kernels; a length that fits in one tile gets a single tile.

  Blocks lie along lanes in the statistics rows and in the transposes of the forward pass, so on
  hardware they are multiples of 128. The interpreter takes multiples of 8, so that tests walk
  many small tiles through the same kernels.
  """
  granule = _SUBLANES if interpret else _LANES
  sizes = []
  for name, block, length in (("block_q", block_q, query_length),
                              ("block_k", block_k, key_length)):
    if block is not None and (block < 1 or block % granule):
      where = "in the interpreter" if interpret else "on TPU hardware"
      raise ValueError(f"{name} must be a positive multiple of {granule} {where}, got {block}")
    block = min(block or _DEFAULT_BLOCK, -(-length // granule) * granule)
    sizes.append((block, -(-length // block) * block))
  (bq, padded_q), (bk, padded_k) = sizes
  return KernelBlocks(forward=(bq, bk), dkdv=(bq, bk), dq=(bq, bk), padded_query_length=padded_q,
                      padded_key_length=padded_k, padded_head_dim=head_dim)


def forward(query, key, value, query_ids, key_ids, offset, config: FlashConfig):
  """query [b, t, n, h], key/value [b, s, k, h], ids [b, t]/[b, s] int32 or None (all padded),
  offset int32 [1] if config.mask.dynamic_offset else None.

  Returns out [b, t, n, h] (`result_type` of value) and the residuals `backward` takes.
  """
  query, key, value = (x.transpose(0, 2, 1, 3) for x in (query, key, value))  # [b, n|k, t|s, h]
  b, n, t, h = query.shape
  group = n // key.shape[1]
  block_q, block_k = config.blocks.forward
  mask = config.mask

  def key_index(bi, ni, i, j, *offset_ref):
    key_blocks = mask.key_blocks(i, block_q, block_k, _offset(offset_ref))
    return (bi, lax.div(ni, group), clamp_block(j, *key_blocks), 0)

  def key_ids_index(bi, ni, i, j, *offset_ref):
    return (bi, 0, key_index(bi, ni, i, j, *offset_ref)[2])

  query_spec = pl.BlockSpec((None, None, block_q, h), lambda bi, ni, i, j, *_: (bi, ni, i, 0))
  key_spec = pl.BlockSpec((None, None, block_k, h), key_index)
  in_specs = [query_spec, key_spec, key_spec]
  inputs = [query, key, value]
  if query_ids is not None:  # Queries along sublanes [b, t, 1], keys along lanes [b, 1, s].
    in_specs += [pl.BlockSpec((None, block_q, 1), lambda bi, ni, i, j, *_: (bi, i, 0)),
                 pl.BlockSpec((None, 1, block_k), key_ids_index)]
    inputs += [query_ids[:, :, None], key_ids[:, None, :]]
  scalars = [] if offset is None else [offset]
  out, lse = pl.pallas_call(
      functools.partial(_forward_kernel, config=config),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=len(scalars),
          grid=(b, n, t // block_q, key.shape[2] // block_k),
          in_specs=in_specs,
          out_specs=[query_spec, _row_spec(block_q)],
          scratch_shapes=[pltpu.VMEM((block_q, h), jnp.float32),
                          pltpu.VMEM((block_q, _LANES), jnp.float32),
                          pltpu.VMEM((block_q, _LANES), jnp.float32)]),
      out_shape=[output_struct(query.shape, result_type(config, value), *scalars, *inputs),
                 output_struct((b, n, 1, t), jnp.float32, *scalars, *inputs)],
      compiler_params=pltpu.CompilerParams(dimension_semantics=_SEMANTICS),
      interpret=config.interpret,
      name="flash_attention_forward",
  )(*scalars, *inputs)
  return out.transpose(0, 2, 1, 3), (query, key, value, query_ids, key_ids, offset, out, lse)


def natural_lse(lse):
  """`forward`'s log-sum-exp residual [b, n, 1, t] as [b, n, t] (natural log; +inf: empty row)."""
  return lse[:, :, 0, :]


def residuals(query, key, value, query_ids, key_ids, offset, out, lse):
  """`backward`'s residuals from arrays in `forward`'s input layout, `out` [b, t, n, h] and a
  natural log-sum-exp [b, n, t] (+inf for empty rows): the backward pass of these keys against
  statistics of a larger attention they are part of (ring attention's)."""
  query, key, value, out = (x.transpose(0, 2, 1, 3) for x in (query, key, value, out))
  return query, key, value, query_ids, key_ids, offset, out, lse[:, :, None, :]


def backward(residuals, d_out, config: FlashConfig):
  """Gradients (dq [b, t, n, h], dk, dv [b, s, k, h]) from `forward`'s residuals and d_out."""
  query, key, value, query_ids, key_ids, offset, out, lse = residuals
  d_out = d_out.transpose(0, 2, 1, 3)  # [b, n, t, h]
  b, n, t, h = query.shape
  num_kv_heads, s = key.shape[1], key.shape[2]
  group = n // num_kv_heads
  mask = config.mask
  # delta_i = sum_j P_ij dP_ij = dO_i . O_i: one fused XLA reduction, read by both kernels.
  delta = jnp.einsum("bnth,bnth->bnt", d_out.astype(jnp.float32), out.astype(jnp.float32))
  delta = delta[:, :, None, :]  # [b, n, 1, t]
  ids = [] if query_ids is None else [query_ids[:, None, :], key_ids[:, :, None]]
  scalars = [] if offset is None else [offset]
  inputs = [query, key, value, d_out, lse, delta, *ids]

  block_q, block_k = config.blocks.dkdv
  num_q_blocks = t // block_q

  def query_index(bi, ki, j, r, *offset_ref):  # r walks each head's query blocks in turn.
    query_blocks = mask.query_blocks(j, block_q, block_k, _offset(offset_ref))
    i = clamp_block(lax.rem(r, num_q_blocks), *query_blocks)
    return (bi, ki * group + lax.div(r, num_q_blocks), i, 0)

  def row_index(bi, ki, j, r, *offset_ref):
    bi, ni, i, _ = query_index(bi, ki, j, r, *offset_ref)
    return (bi, ni, 0, i)

  def query_ids_index(bi, ki, j, r, *offset_ref):
    return (bi, 0, query_index(bi, ki, j, r, *offset_ref)[2])

  query_spec = pl.BlockSpec((None, None, block_q, h), query_index)
  key_spec = pl.BlockSpec((None, None, block_k, h), lambda bi, ki, j, r, *_: (bi, ki, j, 0))
  row_spec = pl.BlockSpec((None, None, 1, block_q), row_index)
  ids_specs = [] if query_ids is None else [
      pl.BlockSpec((None, 1, block_q), query_ids_index),
      pl.BlockSpec((None, block_k, 1), lambda bi, ki, j, r, *_: (bi, j, 0))]
  dk, dv = pl.pallas_call(
      functools.partial(_dkdv_kernel, config=config, num_q_blocks=num_q_blocks),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=len(scalars),
          grid=(b, num_kv_heads, s // block_k, group * num_q_blocks),
          in_specs=[query_spec, key_spec, key_spec, query_spec, row_spec, row_spec, *ids_specs],
          out_specs=[key_spec, key_spec],
          scratch_shapes=[pltpu.VMEM((block_k, h), jnp.float32)] * 2),
      out_shape=[output_struct(key.shape, result_type(config, key), *scalars, *inputs),
                 output_struct(value.shape, result_type(config, value), *scalars, *inputs)],
      compiler_params=pltpu.CompilerParams(dimension_semantics=_SEMANTICS),
      interpret=config.interpret,
      name="flash_attention_dkdv",
  )(*scalars, *inputs)

  block_q, block_k = config.blocks.dq

  def key_index(bi, ni, i, j, *offset_ref):
    key_blocks = mask.key_blocks(i, block_q, block_k, _offset(offset_ref))
    return (bi, lax.div(ni, group), clamp_block(j, *key_blocks), 0)

  def key_ids_index(bi, ni, i, j, *offset_ref):
    return (bi, key_index(bi, ni, i, j, *offset_ref)[2], 0)

  query_spec = pl.BlockSpec((None, None, block_q, h), lambda bi, ni, i, j, *_: (bi, ni, i, 0))
  key_spec = pl.BlockSpec((None, None, block_k, h), key_index)
  ids_specs = [] if query_ids is None else [
      pl.BlockSpec((None, 1, block_q), lambda bi, ni, i, j, *_: (bi, 0, i)),
      pl.BlockSpec((None, block_k, 1), key_ids_index)]
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, config=config),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=len(scalars),
          grid=(b, n, t // block_q, s // block_k),
          in_specs=[query_spec, key_spec, key_spec, query_spec, _row_spec(block_q),
                    _row_spec(block_q), *ids_specs],
          out_specs=query_spec,
          scratch_shapes=[pltpu.VMEM((block_q, h), jnp.float32)]),
      out_shape=output_struct(query.shape, result_type(config, query), *scalars, *inputs),
      compiler_params=pltpu.CompilerParams(dimension_semantics=_SEMANTICS),
      interpret=config.interpret,
      name="flash_attention_dq",
  )(*scalars, *inputs)
  return tuple(x.transpose(0, 2, 1, 3) for x in (dq, dk, dv))


def _row_spec(block_q):
  """Per-query statistics [b, n, 1, t], queries along lanes, on the grid (b, n, i, j)."""
  return pl.BlockSpec((None, None, 1, block_q), lambda bi, ni, i, j, *_: (bi, ni, 0, i))


def _offset(offset_ref):
  """The run-time query offset from the (optional) scalar-prefetch ref [1] in SMEM, or None."""
  return offset_ref[0][0] if offset_ref else None


def _split_offset(config: FlashConfig, refs):
  """(run-time offset or None, the other refs): a scalar-prefetch ref comes first."""
  if config.mask.dynamic_offset:
    return refs[0][0], refs[1:]
  return None, refs


def _run_tile(step, block, block_range, unmasked_range):
  """Runs step(masked) when `block` lies in block_range, unmasked inside unmasked_range."""
  (first, end), (full_first, full_end) = block_range, unmasked_range
  needed = (first <= block) & (block < end)
  unmasked = (full_first <= block) & (block < full_end)
  pl.when(unmasked)(functools.partial(step, masked=False))
  pl.when(needed & jnp.logical_not(unmasked))(functools.partial(step, masked=True))


def _forward_kernel(*refs, config: FlashConfig):
  """Optional offset_ref [1] (SMEM); q_ref, out_ref [block_q, h]; k_ref, v_ref [block_k, h];
  optional q_ids_ref [block_q, 1] and k_ids_ref [1, block_k]; lse_ref [1, block_q]; scratch acc
  [block_q, h], row max and row sum [block_q, 128] (the value repeated along lanes)."""
  mask = config.mask
  offset, (q_ref, k_ref, v_ref, *refs) = _split_offset(config, refs)
  q_ids_ref, k_ids_ref = refs[:2] if mask.has_segments else (None, None)
  out_ref, lse_ref, acc_ref, max_ref, sum_ref = refs[-5:]
  block_q, block_k = config.blocks.forward
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _start():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)
    max_ref[...] = jnp.full(max_ref.shape, -jnp.inf, jnp.float32)
    sum_ref[...] = jnp.zeros(sum_ref.shape, jnp.float32)

  def step(masked):
    logits = _dot_nt(q_ref[...], k_ref[...]) * config.scale  # [block_q, block_k]
    if masked:
      q_row = i * block_q + lax.broadcasted_iota(jnp.int32, logits.shape, 0)
      k_pos = j * block_k + lax.broadcasted_iota(jnp.int32, logits.shape, 1)
      ids = (None, None) if q_ids_ref is None else (q_ids_ref[...], k_ids_ref[...])
      logits = jnp.where(mask.visible(q_row, k_pos, *ids, offset), logits, -jnp.inf)
    row_max = max_ref[:, :1]
    new_max = jnp.maximum(row_max, logits.max(axis=1, keepdims=True))
    # Rows that have seen no visible key keep max -inf; shifting them by 0 keeps exp at 0, not NaN.
    shift = jnp.where(new_max == -jnp.inf, 0.0, new_max)
    correction = jnp.exp(row_max - shift)
    probs = jnp.exp(logits - shift)
    row_sum = sum_ref[:, :1] * correction + probs.sum(axis=1, keepdims=True)
    max_ref[...] = jnp.broadcast_to(new_max, max_ref.shape)
    sum_ref[...] = jnp.broadcast_to(row_sum, sum_ref.shape)
    values = v_ref[...]
    acc_ref[...] = acc_ref[...] * correction + _dot(probs.astype(values.dtype), values)

  _run_tile(step, j, mask.key_blocks(i, block_q, block_k, offset),
            mask.unmasked_key_blocks(i, block_q, block_k, offset))

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    # A row that sees no key outputs 0; a log-sum-exp of +inf makes its recomputed probabilities 0.
    row_sum = sum_ref[...]
    empty = row_sum == 0.0
    out = acc_ref[...] / jnp.where(empty[:, :1], 1.0, row_sum[:, :1])
    out_ref[...] = out.astype(out_ref.dtype)
    lse = jnp.where(empty, jnp.inf, max_ref[...] + jnp.log(row_sum))  # [block_q, 128]
    lse_ref[...] = lse.T[:1]  # Lane-replicated columns transpose into a row of queries.


def _transposed_tile(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, ids, offset, q_first,
                     k_first, config: FlashConfig, masked: bool):
  """Probabilities P^T and logit gradients dS^T [block_k, block_q] of one tile, keys along rows."""
  logits_t = _dot_nt(k_ref[...], q_ref[...]) * config.scale
  if masked:
    q_row = q_first + lax.broadcasted_iota(jnp.int32, logits_t.shape, 1)
    k_pos = k_first + lax.broadcasted_iota(jnp.int32, logits_t.shape, 0)
    ids = (None, None) if ids is None else (ids[0][...], ids[1][...])
    logits_t = jnp.where(config.mask.visible(q_row, k_pos, *ids, offset), logits_t, -jnp.inf)
  probs_t = jnp.exp(logits_t - lse_ref[...])
  dlogits_t = probs_t * (_dot_nt(v_ref[...], do_ref[...]) - delta_ref[...])
  return probs_t, dlogits_t


def _dkdv_kernel(*refs, config: FlashConfig, num_q_blocks: int):
  """Optional offset_ref [1] (SMEM); q_ref, do_ref [block_q, h]; k_ref, v_ref, dk_ref, dv_ref
  [block_k, h]; lse_ref, delta_ref [1, block_q]; optional q_ids_ref [1, block_q] and k_ids_ref
  [block_k, 1]; scratch dk, dv [block_k, h] float32."""
  mask = config.mask
  offset, (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs) = _split_offset(config, refs)
  ids = refs[:2] if mask.has_segments else None
  dk_ref, dv_ref, dk_acc, dv_acc = refs[-4:]
  block_q, block_k = config.blocks.dkdv
  j, r = pl.program_id(2), pl.program_id(3)
  i = lax.rem(r, num_q_blocks)

  @pl.when(r == 0)
  def _start():
    dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
    dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

  def step(masked):
    probs_t, dlogits_t = _transposed_tile(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, ids,
                                          offset, i * block_q, j * block_k, config, masked)
    do, q = do_ref[...], q_ref[...]
    dv_acc[...] += _dot(probs_t.astype(do.dtype), do)
    dk_acc[...] += _dot(dlogits_t.astype(q.dtype), q)

  _run_tile(step, i, mask.query_blocks(j, block_q, block_k, offset),
            mask.unmasked_query_blocks(j, block_q, block_k, offset))

  @pl.when(r == pl.num_programs(3) - 1)
  def _finish():
    dk_ref[...] = (dk_acc[...] * config.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _dq_kernel(*refs, config: FlashConfig):
  """Optional offset_ref [1] (SMEM); q_ref, do_ref, dq_ref [block_q, h]; k_ref, v_ref
  [block_k, h]; lse_ref, delta_ref [1, block_q]; optional q_ids_ref [1, block_q] and k_ids_ref
  [block_k, 1]; scratch dq [block_q, h] float32."""
  mask = config.mask
  offset, (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs) = _split_offset(config, refs)
  ids = refs[:2] if mask.has_segments else None
  dq_ref, dq_acc = refs[-2:]
  block_q, block_k = config.blocks.dq
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _start():
    dq_acc[...] = jnp.zeros(dq_acc.shape, jnp.float32)

  def step(masked):
    _, dlogits_t = _transposed_tile(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, ids,
                                    offset, i * block_q, j * block_k, config, masked)
    k = k_ref[...]
    # A 32-bit transpose of whole (8, 128) tiles is the layout change Mosaic does best.
    dq_acc[...] += _dot(dlogits_t.T.astype(k.dtype), k)

  _run_tile(step, j, mask.key_blocks(i, block_q, block_k, offset),
            mask.unmasked_key_blocks(i, block_q, block_k, offset))

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    dq_ref[...] = (dq_acc[...] * config.scale).astype(dq_ref.dtype)
