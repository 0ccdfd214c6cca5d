"""FlashAttention for Hopper GPUs in Pallas' Mosaic GPU dialect (FlashAttention-3's recipe: Shah
et al., 2024): the forward pass, the dK/dV kernel and the dQ kernel.

Pallas' Triton backend reaches about 0.56x cuDNN's forward+backward at 8k tokens on an H200
(docs/BENCHMARKS.md) whatever its tiles: Triton does not give Pallas Hopper's asynchronous
tensor-core instructions (wgmma) or its bulk copy engine (TMA). Mosaic GPU does. Every kernel here
runs three warpgroups per program (a CTA): two compute warpgroups, each holding 64 rows (queries
for the forward and dQ kernels, `_query_major`; keys and values for dK/dV, `_dkdv`), which
multiply with wgmma and keep their accumulators in registers, and one memory warpgroup that
streams the other side's blocks into a ring of `slots` shared-memory buffers with TMA, so that
loading the next blocks overlaps the products. The forward computes softmax(Q K^T) V with an
online softmax; the backward kernels recompute the probabilities from the saved log-sum-exp:
dQ += dS K, and dV += P^T dO, dK += dS^T Q, with dS = P (dO V^T - delta), dK/dV summing over the
query heads that share a kv head (grouped-query attention).

Synchronization, per ring slot: the memory warpgroup's copies complete one `*_ready` barrier per
input; each compute warpgroup arrives on the slot's `*_free` barrier once it no longer reads the
slot (two arrivals complete it), and the memory warpgroup waits for that before it refills the
slot. A Mosaic GPU barrier tracks its phase per thread, so every thread must wait on every
completion of a barrier it waits on, in order: a compute warpgroup walks all the blocks its CTA
streams, and on a block its own rows do not meet (the CTA's range is the union of both
warpgroups' ranges) it waits and releases without computing.

Which keys a query sees is `TileMask`, the Triton and TPU kernels' predicate; the log-sum-exp is
saved in the Triton forward's convention (base 2, +inf for a row that sees no key): the
residuals are the Triton backend's. With config.dq_atomic the dK/dV kernel also computes dQ
(FlashAttention-3's backward: 5 products per tile instead of 7), adding float32 shares into a
buffer with TMA's reducing copies.

Supported: bfloat16/float16, head_dim up to 128 (padded to 64 or 128), causal masks, sliding
windows, segment ids, grouped kv heads, a static query offset; results in the inputs' dtype.
Anything else (a run-time query offset, a float32 result, Flash-Decoding's key splits, a layer of
a stacked cache) is the Triton backend's: `forward` raises naming it. Letters: b batch, t/s
query/key length, n/k query/kv heads, g = n // k, h head_dim.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from gen_jax.kernels import flash_attention_gpu
from gen_jax.kernels.flash_attention_tiles import (
  FlashConfig,
  KernelBlocks,
  inside_range,
  output_struct,
  vary_like,
)

_LOG2_E = math.log2(math.e)
_ROWS_PER_WARPGROUP = 64  # wgmma's M: one warpgroup's queries.
_COMPUTE_WARPGROUPS = 2
# Key/value blocks in flight: 2 x 2 x [128, 128] bf16 is 128 KiB of the 227 KiB a CTA may use.
_SLOTS = 2
_SHARED_MEMORY_BYTES = 227 * 1024  # A Hopper CTA's most.
# Registers per thread (setmaxnreg) of the compute and memory warpgroups: 2 x 128 x 240 + 128 x 24
# fill the 64K register file (FlashAttention-3's split). The memory warpgroup only issues copies
# and waits; with 232 / 40 ptxas spilled in the backward kernels at head_dim 128
# (benchmarks/aot_hlo.py --program=attention prints ptxas' report without a GPU).
_COMPUTE_REGISTERS, _MEMORY_REGISTERS = 240, 24
_SWIZZLE_BYTES = 128  # Shared-memory rows of 64 bf16 values, swizzled against bank conflicts.
_DTYPES = ("bfloat16", "float16")
# JAX 0.10's Mosaic GPU interpreter cannot read a transposed shared-memory operand.
_INTERPRETER_TRANSPOSES_NOTHING = tuple(int(x) for x in jax.__version__.split(".")[:2]) < (0, 11)

# The residuals and their lse convention are the Triton backend's.
residuals = flash_attention_gpu.residuals
natural_lse = flash_attention_gpu.natural_lse


def plan_blocks(head_dim: int, query_length: int, key_length: int, block_q: int | None,
                block_k: int | None, interpret: bool) -> KernelBlocks:
  """The kernels' tiles: the forward and dQ kernels' (block_q: queries per compute warpgroup,
  wgmma's 64, the only value taken; block_k: keys per ring slot, default 128), the dK/dV
  kernel's (64 queries per ring slot, 2 x 64 keys held per CTA); lengths padded to whole tiles of
  all of them and head_dim to 64 or 128. (`interpret`: the backends' common signature.)"""
  del interpret
  if head_dim > 128:
    raise ValueError(f"the mosaic_gpu backend takes head_dim up to 128, got {head_dim}")
  if block_q not in (None, _ROWS_PER_WARPGROUP):
    raise ValueError(f"block_q is {_ROWS_PER_WARPGROUP} (wgmma's rows) on the mosaic_gpu backend, "
                     f"got {block_q}")
  forward_k = block_k or 128
  if forward_k % 64:
    raise ValueError(f"block_k must be a multiple of 64 on the mosaic_gpu backend, got {block_k}")
  cta_rows = _COMPUTE_WARPGROUPS * _ROWS_PER_WARPGROUP
  padded_h = 64 if head_dim <= 64 else 128
  # The dQ kernel's shared memory, the most of the three: the key/value ring, each compute
  # warpgroup's query and dO tiles, its lse/delta rows, and the ids (2-byte inputs).
  dq_bytes = (2 * _SLOTS * forward_k * padded_h * 2 + _COMPUTE_WARPGROUPS * 2 * _ROWS_PER_WARPGROUP
              * padded_h * 2 + _COMPUTE_WARPGROUPS * 2 * _ROWS_PER_WARPGROUP * 4
              + (_SLOTS + 1) * max(forward_k, cta_rows) * 4)
  if dq_bytes > _SHARED_MEMORY_BYTES:
    raise ValueError(f"block_k={forward_k} at head_dim {padded_h} needs {dq_bytes // 1024} KiB of "
                     f"shared memory on the mosaic_gpu backend; a CTA has "
                     f"{_SHARED_MEMORY_BYTES // 1024}")
  step_k = math.lcm(cta_rows, forward_k)
  return KernelBlocks(forward=(_ROWS_PER_WARPGROUP, forward_k),
                      dkdv=(_ROWS_PER_WARPGROUP, cta_rows), dq=(_ROWS_PER_WARPGROUP, forward_k),
                      padded_query_length=-(-query_length // cta_rows) * cta_rows,
                      padded_key_length=-(-key_length // step_k) * step_k,
                      padded_head_dim=padded_h)


def check_supported(dtype, config: FlashConfig, offset=None, layer=None) -> None:
  """Raises ValueError naming what this backend's kernels do not take (the gpu backend's Triton
  kernels take all of it)."""
  if jnp.dtype(dtype).name not in _DTYPES:
    raise ValueError(f"the mosaic_gpu backend takes {_DTYPES} inputs, got {jnp.dtype(dtype)}")
  if offset is not None or config.mask.dynamic_offset:
    raise ValueError("the mosaic_gpu backend takes a static (Python int) query_offset only")
  if layer is not None:
    raise ValueError("the mosaic_gpu backend does not read a layer of a stacked cache")
  if config.key_splits not in (None, 1):
    raise ValueError("key_splits is a setting of the gpu backend's forward kernel")
  if config.result_dtype not in (None, jnp.dtype(dtype).name):
    raise ValueError(f"the mosaic_gpu backend's forward writes its inputs' dtype, not "
                     f"result_dtype={config.result_dtype}")


def forward(query, key, value, query_ids, key_ids, offset, config: FlashConfig, layer=None,
            interpret=None):
  """query [b, t, n, h], key/value [b, s, k, h], ids [b, t]/[b, s] int32 or None, all padded
  (`plan_blocks`); offset must be None (a static query offset is config.mask's).

  Returns out [b, t, n, h] and the residuals `backward` takes (the lse base 2, [b, n, t]).
  interpret: a Mosaic GPU interpreter's parameters (tests), else config.interpret picks JAX's
  default ones and None compiles for the GPU.
  """
  check_supported(query.dtype, config, offset, layer)
  b, t, n, h = query.shape
  block_q, block_k = config.blocks.forward
  logit_scale = config.scale * _LOG2_E

  def init(walk):
    return (walk.laid_out(jnp.zeros((block_q, h), jnp.float32), plgpu.Layout.WGMMA),
            walk.laid_out(jnp.full((block_q,), -jnp.inf, jnp.float32), walk.rows_layout),
            walk.laid_out(jnp.zeros((block_q,), jnp.float32), walk.rows_layout))

  def step(walk, j, slot, carry, masked):
    acc, row_max, row_sum = carry
    logits = walk.matmul(walk.tiles[0], walk.transposed(walk.keys(slot)), (block_q, block_k))
    logits = walk.masked(logits * logit_scale, j, slot) if masked else logits * logit_scale
    walk.release_keys(slot)
    new_max = jnp.maximum(row_max, logits.max(axis=1))
    # Rows that have seen no visible key keep max -inf; shifting them by 0 keeps exp2 at 0.
    shift = jnp.where(new_max == -jnp.inf, 0.0, new_max)
    correction = jnp.exp2(row_max - shift)
    probs = jnp.exp2(logits - lax.broadcast_in_dim(shift, logits.shape, [0]))
    row_sum = row_sum * correction + probs.sum(axis=1)
    acc = acc * lax.broadcast_in_dim(correction, acc.shape, [0])
    walk.wait_values(slot)
    acc = walk.matmul(probs.astype(query.dtype), walk.values(slot), (block_q, h), acc)
    walk.release_values(slot)
    return acc, new_max, row_sum

  def finish(walk, carry):
    acc, row_max, row_sum = carry
    # A row that sees no key outputs 0; its lse of +inf makes every recomputed probability 0.
    empty = row_sum == 0.0
    inverse = 1.0 / jnp.where(empty, 1.0, row_sum)
    out = (acc * lax.broadcast_in_dim(inverse, acc.shape, [0])).astype(query.dtype)
    lse = jnp.where(empty, jnp.inf, row_max + jnp.log2(jnp.where(empty, 1.0, row_sum)))
    return [out], [lse]

  out, lse = _query_major(
      "flash_attention_forward", config, query, key, value, query_ids, key_ids, tiles_in=[query],
      rows_in=[], tiles_out=[query.dtype], rows_out=1, init=init, step=step, finish=finish,
      interpret=interpret)
  return out, (query, key, value, query_ids, key_ids, offset, out, lse)


def backward(residuals, d_out, config: FlashConfig, interpret=None):
  """Gradients (dq [b, t, n, h], dk, dv [b, s, k, h]) from `forward`'s residuals by two Mosaic GPU
  kernels: dQ shaped as the forward (its queries held, the keys and values streamed), dK and dV
  key-major (`_dkdv`); with config.dq_atomic by the dK/dV kernel alone, which also adds each
  tile's share of dQ into a float32 buffer (5 products per tile instead of 7)."""
  query, key, value, query_ids, key_ids, offset, out, lse = residuals
  check_supported(query.dtype, config, offset)
  delta = flash_attention_gpu.output_gradient_dot(out, d_out)
  dk, dv, dq = _dkdv(config, query, key, value, query_ids, key_ids, d_out, lse, delta, interpret)
  if config.dq_atomic:
    return (dq * config.scale).astype(query.dtype), dk, dv
  h = query.shape[3]
  block_q, block_k = config.blocks.forward
  logit_scale = config.scale * _LOG2_E

  def init(walk):
    return walk.laid_out(jnp.zeros((block_q, h), jnp.float32), plgpu.Layout.WGMMA)

  def step(walk, j, slot, dq, masked):
    row_lse, row_delta = (lax.broadcast_in_dim(x, (block_q, block_k), [0]) for x in walk.rows)
    logits = walk.matmul(walk.tiles[0], walk.transposed(walk.keys(slot)), (block_q, block_k))
    logits = walk.masked(logits * logit_scale, j, slot) if masked else logits * logit_scale
    probs = jnp.exp2(logits - row_lse)
    walk.wait_values(slot)
    d_probs = walk.matmul(walk.tiles[1], walk.transposed(walk.values(slot)), (block_q, block_k))
    walk.release_values(slot)
    d_logits = (probs * (d_probs - row_delta)).astype(key.dtype)
    dq = walk.matmul(d_logits, walk.keys(slot), (block_q, h), dq)
    walk.release_keys(slot)
    return dq

  def finish(walk, dq):
    return [(dq * config.scale).astype(query.dtype)], []

  (dq,) = _query_major(
      "flash_attention_dq", config, query, key, value, query_ids, key_ids,
      tiles_in=[query, d_out], rows_in=[lse, delta], tiles_out=[query.dtype], rows_out=0,
      init=init, step=step, finish=finish, interpret=interpret)
  return dq, dk, dv


def _dkdv(config: FlashConfig, query, key, value, query_ids, key_ids, d_out, lse, delta,
          interpret):
  """dK and dV [b, s, k, h], and with config.dq_atomic dQ / scale [b, t, n, h] float32 (else
  None): a key-major kernel. Each CTA holds 2 * 64 keys and values of one kv head (64 per compute
  warpgroup) and the memory warpgroup streams, for every query head of the group in turn, the
  query blocks that see them: Q and dO [block_q, h], lse and delta [block_q] (and query ids) into
  a ring of shared-memory slots. Per block, with keys along the rows: P^T = exp2(K Q^T - lse),
  dV += P^T dO, dS^T = P^T (V dO^T - delta), dK += dS^T Q; with dq_atomic also dS K, the
  block's share of dQ from these keys, into a shared-memory buffer per compute warpgroup that the
  memory warpgroup adds into a float32 buffer in global memory with a TMA reducing copy
  (FlashAttention-3's backward; the order of the additions varies from run to run), handing
  the buffer back (`share_ready` / `share_free`) once TMA has read it. JAX's interpreter has no
  reducing copy: there each share goes into its key block's own slice of a [s / 64, b, t, n, h]
  buffer, summed after."""
  b, t, n, h = query.shape
  s, num_kv_heads = key.shape[1], key.shape[2]
  group = n // num_kv_heads
  block_k = _ROWS_PER_WARPGROUP  # Keys per compute warpgroup: wgmma's M.
  block_q = _ROWS_PER_WARPGROUP
  cta_keys = _COMPUTE_WARPGROUPS * block_k
  num_ctas, slots = s // cta_keys, _SLOTS
  if s % cta_keys or t % block_q:
    raise ValueError(f"unpadded shapes {query.shape}, {key.shape}: pad with plan_blocks")
  interpret = _interpreter(interpret, config)
  fused_dq, num_k_blocks = config.dq_atomic, s // block_k
  if fused_dq and interpret is not None:  # Slices of the shares that no block writes stay 0.
    interpret = dataclasses.replace(interpret, uninitialized_memory="zero")
  ops = _Operations(interpret, (block_k, block_q))
  mask, segments = config.mask, query_ids is not None
  logit_scale = config.scale * _LOG2_E
  tiles = (plgpu.TilingTransform((8, _SWIZZLE_BYTES // query.dtype.itemsize)),
           plgpu.SwizzleTransform(_SWIZZLE_BYTES))
  float_tiles = (plgpu.TilingTransform((8, _SWIZZLE_BYTES // 4)),
                 plgpu.SwizzleTransform(_SWIZZLE_BYTES))
  queries_layout = plgpu.Layout.WGMMA.reduce(0)  # Per streamed query: along the columns.

  def flash_attention_dkdv(*refs):
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = refs[:6]
    q_ids_ref, k_ids_ref = refs[6:8] if segments else (None, None)
    if not fused_dq:
      dk_ref, dv_ref = refs[-2:]
    elif ops.interpreted:  # The shares' buffer is the kernel's third result.
      dk_ref, dv_ref, dq_ref = refs[-3:]
    else:  # The float32 dQ buffer is a Ref the kernel adds into, its last operand.
      dq_ref, dk_ref, dv_ref = refs[-3:]
    batch, kv_head = lax.axis_index("batch"), lax.axis_index("heads")
    cta = lax.axis_index("k_blocks")
    first, end = mask.query_blocks(cta, block_q, cta_keys)  # Both warpgroups' queries.
    blocks = end - first
    steps = group * blocks

    def head_of(i):
      return kv_head * group + lax.div(i, blocks)

    def block_of(i):
      return first + lax.rem(i, blocks)

    def own_blocks(wg):  # The query blocks that see compute warpgroup wg's keys.
      k_block = cta * _COMPUTE_WARPGROUPS + wg
      return inside_range(*mask.query_blocks(k_block, block_q, block_k), first, end)

    def stream(smem, barriers):  # The memory warpgroup: one slot per (query head, query block).
      def add_dq_shares(i):
        """With dq_atomic: once both compute warpgroups are done with step i, adds each one's dQ
        share of it (if its keys are seen by the step's query block) into dQ's rows, and hands
        the share buffer back when TMA has read it."""
        head, block = head_of(i), block_of(i)
        for wg in range(_COMPUTE_WARPGROUPS):
          own_first, own_end = own_blocks(wg)

          @pl.when((own_first <= block) & (block < own_end))
          def _():
            plgpu.barrier_wait(barriers["share_ready"].at[wg])
            rows = pl.ds(block * block_q, block_q)
            if ops.interpreted:  # A slice per key block: the interpreter has no reducing copy.
              plgpu.copy_smem_to_gmem(smem["dq"].at[wg], dq_ref.at[
                  cta * _COMPUTE_WARPGROUPS + wg, batch, rows, head])
            else:
              plgpu.copy_smem_to_gmem(smem["dq"].at[wg], dq_ref.at[batch, rows, head],
                                      reduction_op="add")
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)
            plgpu.barrier_arrive(barriers["share_free"].at[wg])

      if fused_dq:  # Each share buffer starts free.
        for wg in range(_COMPUTE_WARPGROUPS):
          plgpu.barrier_arrive(barriers["share_free"].at[wg])

      @pl.loop(0, steps)
      def _(i):
        slot, head = lax.rem(i, slots), head_of(i)
        rows = pl.ds(block_of(i) * block_q, block_q)

        @pl.when(i >= slots)
        def _():
          plgpu.barrier_wait(barriers["free"].at[slot])
          if fused_dq:
            add_dq_shares(i - slots)

        plgpu.copy_gmem_to_smem(q_ref.at[batch, rows, head], smem["q"].at[slot],
                                barriers["q_ready"].at[slot])
        for r, ref in enumerate((lse_ref, delta_ref)):
          plgpu.copy_gmem_to_smem(ref.at[batch, head, rows], smem["rows"].at[slot, r],
                                  barriers["rows_ready"].at[2 * slot + r])
        if segments:
          plgpu.copy_gmem_to_smem(q_ids_ref.at[batch, rows], smem["ids"].at[slot, pl.ds(
              0, block_q)], barriers["ids_ready"].at[slot])
        plgpu.copy_gmem_to_smem(do_ref.at[batch, rows, head], smem["do"].at[slot],
                                barriers["do_ready"].at[slot])

      @pl.loop(jnp.maximum(0, steps - slots), steps)  # Observe the last releases too.
      def _(i):
        plgpu.barrier_wait(barriers["free"].at[lax.rem(i, slots)])
        if fused_dq:
          add_dq_shares(i)
      if fused_dq:
        plgpu.wait_smem_to_gmem(0)

    def compute(smem, barriers):
      wg = lax.axis_index("wg")
      k_block = cta * _COMPUTE_WARPGROUPS + wg
      keys = pl.ds(k_block * block_k, block_k)
      for r, ref in enumerate((k_ref, v_ref)):
        plgpu.copy_gmem_to_smem(ref.at[batch, keys, kv_head], smem["kv"].at[wg, r],
                                barriers["kv_ready"].at[2 * wg + r])
      k_ids = None
      if segments:
        k_ids = ops.held_ids(smem, wg, k_ids_ref.at[batch, keys], barriers["key_ids_ready"].at[wg])
      plgpu.barrier_wait(barriers["kv_ready"].at[2 * wg])
      plgpu.barrier_wait(barriers["kv_ready"].at[2 * wg + 1])
      k_smem, v_smem = smem["kv"].at[wg, 0], smem["kv"].at[wg, 1]
      k_pos, q_col = ops.iota(0) + k_block * block_k, ops.iota(1)
      matmul = functools.partial(ops.matmul, smem, wg)
      transposed = functools.partial(ops.transposed, smem, wg)

      def wait_inputs(slot):
        plgpu.barrier_wait(barriers["q_ready"].at[slot])
        plgpu.barrier_wait(barriers["rows_ready"].at[2 * slot])
        plgpu.barrier_wait(barriers["rows_ready"].at[2 * slot + 1])
        if segments:
          plgpu.barrier_wait(barriers["ids_ready"].at[slot])

      def attend(j, carry, base, masked):
        dk, dv = carry
        i = base + j - first
        slot = lax.rem(i, slots)
        wait_inputs(slot)
        q_smem, do_smem = smem["q"].at[slot], smem["do"].at[slot]
        row_lse, row_delta = (lax.broadcast_in_dim(
            ops.load(smem["rows"].at[slot, r], queries_layout), (block_k, block_q), [1])
            for r in range(2))
        logits_t = matmul(k_smem, transposed(q_smem), (block_k, block_q)) * logit_scale
        if masked:
          q_ids = None
          if segments:
            q_ids = lax.broadcast_in_dim(ops.load(smem["ids"].at[slot, pl.ds(0, block_q)],
                                                  queries_layout), logits_t.shape, [1])
          visible = mask.visible(q_col + j * block_q, k_pos, q_ids, k_ids)
          logits_t = jnp.where(visible, logits_t, -jnp.inf)
        probs_t = jnp.exp2(logits_t - row_lse)  # [block_k, block_q]
        plgpu.barrier_wait(barriers["do_ready"].at[slot])
        dv = matmul(probs_t.astype(value.dtype), do_smem, (block_k, h), dv)
        d_probs_t = matmul(v_smem, transposed(do_smem), (block_k, block_q))
        d_logits_t = (probs_t * (d_probs_t - row_delta)).astype(query.dtype)
        d_logits = ops.transposed_tile(smem, wg, d_logits_t) if fused_dq else None
        dk = matmul(d_logits_t, q_smem, (block_k, h), dk)
        if fused_dq:
          add_dq_share(d_logits)
        plgpu.barrier_arrive(barriers["free"].at[slot])
        return dk, dv

      def add_dq_share(d_logits):
        """dS K [block_q, h] (d_logits: dS [block_q, block_k] in shared memory) from this
        warpgroup's keys into its share buffer, for the memory warpgroup to add into dQ (issued
        here, in the loop, the reducing copy spilled registers at head_dim 64; FlashAttention-3
        gives it to a producer too). In 64 columns at a time: beside dK's and dV's accumulators
        a whole [64, 128] float32 share spilled more."""
        share = smem["dq"].at[wg]
        plgpu.barrier_wait(barriers["share_free"].at[wg])  # TMA has read the last share.
        for c in range(0, h, 64):
          columns = pl.ds(c, 64)
          share.at[:, columns][...] = matmul(d_logits, k_smem.at[:, columns], (block_q, 64))
        plgpu.commit_smem()
        plgpu.barrier_arrive(barriers["share_ready"].at[wg])

      def skip(j, carry, base):  # A query block of the CTA this warpgroup's keys are not seen by.
        slot = lax.rem(base + j - first, slots)
        wait_inputs(slot)
        plgpu.barrier_wait(barriers["do_ready"].at[slot])
        plgpu.barrier_arrive(barriers["free"].at[slot])
        return carry

      own_first, own_end = own_blocks(wg)
      full_first, full_end = inside_range(
          *mask.unmasked_query_blocks(k_block, block_q, block_k), own_first, own_end)

      def head_step(g, carry):  # dK and dV sum over the query heads sharing this kv head.
        base = g * blocks
        carry = lax.fori_loop(first, own_first, functools.partial(skip, base=base), carry)
        for start, stop, is_masked in ((own_first, full_first, True),
                                       (full_first, full_end, False), (full_end, own_end, True)):
          carry = lax.fori_loop(start, stop, functools.partial(
              attend, base=base, masked=is_masked), carry)
        return lax.fori_loop(own_end, end, functools.partial(skip, base=base), carry)

      zeros = ops.laid_out(jnp.zeros((block_k, h), jnp.float32), plgpu.Layout.WGMMA)
      dk, dv = lax.fori_loop(0, group, head_step, (zeros, zeros))
      if fused_dq:  # Observe the share buffer's last hand-back (each phase must be waited).
        plgpu.barrier_wait(barriers["share_free"].at[wg])
      k_smem[...] = (dk * config.scale).astype(key.dtype)  # The keys are read no more.
      v_smem[...] = dv.astype(value.dtype)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(k_smem, dk_ref.at[batch, keys, kv_head])
      plgpu.copy_smem_to_gmem(v_smem, dv_ref.at[batch, keys, kv_head])
      plgpu.wait_smem_to_gmem(0)

    smem = {"kv": plgpu.SMEM((_COMPUTE_WARPGROUPS, 2, block_k, h), key.dtype, transforms=tiles),
            "q": plgpu.SMEM((slots, block_q, h), query.dtype, transforms=tiles),
            "do": plgpu.SMEM((slots, block_q, h), query.dtype, transforms=tiles),
            "rows": plgpu.SMEM((slots, 2, block_q), jnp.float32),
            **ops.buffers(query.dtype, h, tiles)}
    if fused_dq:  # Per compute warpgroup: dS for the product, then its dQ share for the copy.
      smem["ds"] = plgpu.SMEM((_COMPUTE_WARPGROUPS, block_k, block_q), query.dtype,
                              transforms=tiles)
      smem["dq"] = plgpu.SMEM((_COMPUTE_WARPGROUPS, block_q, h), jnp.float32,
                              transforms=float_tiles)
    barriers = {"kv_ready": plgpu.Barrier(num_barriers=2 * _COMPUTE_WARPGROUPS),
                "q_ready": plgpu.Barrier(num_barriers=slots),
                "do_ready": plgpu.Barrier(num_barriers=slots),
                "rows_ready": plgpu.Barrier(num_barriers=2 * slots),
                "free": plgpu.Barrier(num_arrivals=_COMPUTE_WARPGROUPS, num_barriers=slots)}
    if fused_dq:  # Per compute warpgroup: its share written; its share read by TMA.
      barriers["share_ready"] = plgpu.Barrier(num_barriers=_COMPUTE_WARPGROUPS)
      barriers["share_free"] = plgpu.Barrier(num_barriers=_COMPUTE_WARPGROUPS)
    if segments:  # A ring slot of query ids per block, then a row of both warpgroups' key ids.
      smem["ids"] = plgpu.SMEM((slots + 1, max(block_q, cta_keys)), jnp.int32)
      barriers["ids_ready"] = plgpu.Barrier(num_barriers=slots)
      barriers["key_ids_ready"] = plgpu.Barrier(num_barriers=_COMPUTE_WARPGROUPS)
    pl.run_scoped(_specialized(compute, stream), smem, barriers, collective_axes="wg")

  inputs = (query, key, value, d_out, lse, delta, *((query_ids, key_ids) if segments else ()))
  results = [(key.shape, key.dtype), (value.shape, value.dtype)]
  grid = (num_kv_heads, num_ctas, b), ("heads", "k_blocks", "batch")
  if not fused_dq:
    return (*_launch(flash_attention_dkdv, inputs, results, *grid, interpret), None)
  if ops.interpreted:
    dk, dv, shares = _launch(flash_attention_dkdv, inputs, [
        *results, ((num_k_blocks, *query.shape), jnp.float32)], *grid, interpret)
    return dk, dv, shares.sum(axis=0)
  dq = jax.new_ref(vary_like(jnp.zeros(query.shape, jnp.float32), *inputs))
  dk, dv = _launch(flash_attention_dkdv, (*inputs, dq), results, *grid, interpret)
  return dk, dv, dq[...]


def _specialized(compute, stream):
  """The body of a CTA's warpgroups over its scoped (shared memory, barriers): the compute
  warpgroups run `compute` with more registers, the last warpgroup `stream` with fewer."""
  def scoped(smem, barriers):
    wg = lax.axis_index("wg")

    @pl.when(wg < _COMPUTE_WARPGROUPS)
    def _():
      plgpu.set_max_registers(_COMPUTE_REGISTERS, action="increase")
      compute(smem, barriers)

    @pl.when(wg == _COMPUTE_WARPGROUPS)
    def _():
      plgpu.set_max_registers(_MEMORY_REGISTERS, action="decrease")
      stream(smem, barriers)

  return scoped


def _launch(body, inputs, out_shapes, grid, grid_names, interpret):
  """Runs `body` on `inputs` (arrays, or Refs it writes in place) as a Mosaic GPU kernel of three
  warpgroups per CTA over `grid`; returns its results [(shape, dtype) of out_shapes], varying over
  the inputs' manual mesh axes."""
  arrays = [x for x in inputs if isinstance(x, jax.Array)]
  results = plgpu.kernel(
      body, out_type=[output_struct(shape, dtype, *arrays) for shape, dtype in out_shapes],
      grid=grid, grid_names=grid_names, num_threads=_COMPUTE_WARPGROUPS + 1, thread_name="wg",
      compiler_params=plgpu.CompilerParams(approx_math=True), interpret=interpret)(*inputs)
  return [vary_like(x, *arrays) for x in results]


def _interpreter(interpret, config: FlashConfig):
  """The Mosaic GPU interpreter's parameters: the call's, JAX's defaults when config.interpret,
  else None (compile for the GPU)."""
  if interpret is None and config.interpret:
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
    return InterpretGPUParams()
  return interpret


class _Walk:
  """What a kernel's step sees of its warpgroup: its held tiles in shared memory (`tiles`), its
  per-row values in registers (`rows`), the ring's blocks, and the operations whose form differs
  between the GPU and the interpreter."""

  def __init__(self, **fields):
    self.__dict__.update(fields)


class _Operations:
  """Products, transposes, layouts and loads as the GPU or JAX's Mosaic GPU interpreter takes
  them. On the GPU a product's left operand may come from registers and its right one may be a
  transposed view of shared memory (FlashAttention-3); the interpreter only multiplies operands
  held in shared memory (on JAX 0.10 untransposed), so there they are staged in a warpgroup's
  `stage` and `transposed` buffers, and it has no run_state: a fresh accumulator is added
  instead of accumulating in place."""

  def __init__(self, interpret, tile_shape):
    self.interpreted = interpret is not None
    self.stage_transposes = self.interpreted and _INTERPRETER_TRANSPOSES_NOTHING
    self.tile_shape = tile_shape  # [rows, columns] of the score tiles.

  def buffers(self, dtype, h, tiles) -> dict:
    """The shared-memory staging buffers the interpreter needs, one per compute warpgroup."""
    smem = {}
    if self.interpreted:
      smem["stage"] = plgpu.SMEM((_COMPUTE_WARPGROUPS, *self.tile_shape), dtype, transforms=tiles)
    if self.stage_transposes:
      smem["transposed"] = plgpu.SMEM((_COMPUTE_WARPGROUPS, h, self.tile_shape[1]), dtype,
                                      transforms=tiles)
    return smem

  def laid_out(self, x, layout):
    # Registers' layouts mean nothing to an interpreter; JAX 0.10's has no rule for setting one.
    return x if self.stage_transposes else plgpu.layout_cast(x, layout)

  def load(self, ref, layout):
    return ref[...] if self.stage_transposes else plgpu.load(ref, (), layout=layout)

  def iota(self, dim):
    """Positions along `dim` of a score tile, in wgmma's accumulator layout."""
    if self.stage_transposes:
      return lax.broadcasted_iota(jnp.int32, self.tile_shape, dim)
    return plgpu.broadcasted_iota(jnp.int32, self.tile_shape, dim, layout=plgpu.Layout.WGMMA)

  def held_ids(self, smem, wg, ids_ref, barrier):
    """The segment ids of a warpgroup's held rows (ids_ref: their [rows] in HBM), broadcast over
    its score tiles' columns. They go through the row after the ring of the `ids` buffer."""
    rows = self.tile_shape[0]
    held = smem["ids"].at[_SLOTS, pl.ds(wg * rows, rows)]
    plgpu.copy_gmem_to_smem(ids_ref, held, barrier)
    plgpu.barrier_wait(barrier)
    return lax.broadcast_in_dim(self.load(held, plgpu.Layout.WGMMA.reduce(1)), self.tile_shape,
                                [0])

  def matmul(self, smem, wg, a, b_ref, shape, acc=None):
    """a @ b_ref in float32 [shape], plus acc; a a shared-memory ref or a score tile in registers."""
    if self.interpreted and isinstance(a, jax.Array):
      smem["stage"].at[wg][...] = a
      plgpu.commit_smem()
      a = smem["stage"].at[wg]

    def product(acc_ref):
      plgpu.wgmma(acc_ref, a, b_ref)

    if acc is None or self.interpreted:
      fresh = pl.run_scoped(lambda acc_ref: (product(acc_ref), acc_ref[...])[1],
                            plgpu.ACC(shape, jnp.float32))
      return fresh if acc is None else acc + fresh
    return pl.run_state(product)(plgpu.ACC.init(acc))  # In place: no second accumulator.

  def transposed_tile(self, smem, wg, x):
    """A square score tile in registers as the transposed left operand of a product: through a
    warpgroup's `ds` buffer, read transposed (copied transposed where the interpreter cannot)."""
    if self.stage_transposes:
      smem["ds"].at[wg][...] = x.T
      plgpu.commit_smem()
      return smem["ds"].at[wg]
    smem["ds"].at[wg][...] = x
    plgpu.commit_smem()
    return smem["ds"].at[wg].transpose((1, 0))

  def transposed(self, smem, wg, ref):
    """A [rows, h] block as the [h, rows] right operand of a product."""
    if not self.stage_transposes:
      return ref.transpose((1, 0))
    smem["transposed"].at[wg][...] = ref[...].T
    plgpu.commit_smem()
    return smem["transposed"].at[wg]


def _query_major(name, config: FlashConfig, query, key, value, query_ids, key_ids, *, tiles_in,
                 rows_in, tiles_out, rows_out: int, init, step, finish, interpret):
  """A kernel that holds 2 * block_q queries of one head per CTA (block_q per compute warpgroup)
  and streams their keys and values through a ring of shared-memory slots: the forward pass and
  the dQ kernel.

  tiles_in: [b, t, n, h] arrays each warpgroup loads its [block_q, h] block of (the query; dO);
  rows_in: [b, n, t] float32 arrays it loads its [block_q] of (lse, delta); init(walk) -> carry;
  step(walk, key block j, ring slot, carry, masked) -> carry, which must release the slot's keys
  and values (walk.release_keys / release_values) and wait for the values (walk.wait_values)
  before reading them; finish(walk, carry) -> ([block_q, h] tiles in tiles_out's dtypes,
  rows_out [block_q] float32 rows). Returns the [b, t, n, h] and [b, n, t] arrays they fill.
  """
  b, t, n, h = query.shape
  s, num_kv_heads = key.shape[1], key.shape[2]
  group = n // num_kv_heads
  block_q, block_k = config.blocks.forward
  cta_rows = _COMPUTE_WARPGROUPS * block_q
  num_ctas, slots = t // cta_rows, _SLOTS
  if t % cta_rows or s % block_k or h not in (64, 128):
    raise ValueError(f"unpadded shapes {query.shape}, {key.shape}: pad with plan_blocks")
  interpret = _interpreter(interpret, config)
  ops = _Operations(interpret, (block_q, block_k))
  mask, segments = config.mask, query_ids is not None
  tiles = (plgpu.TilingTransform((8, _SWIZZLE_BYTES // query.dtype.itemsize)),
           plgpu.SwizzleTransform(_SWIZZLE_BYTES))
  rows_layout, keys_layout = plgpu.Layout.WGMMA.reduce(1), plgpu.Layout.WGMMA.reduce(0)
  num_tiles, num_rows = len(tiles_in), len(rows_in)

  def kernel(*refs):
    q_ref, k_ref, v_ref = refs[:3]
    refs = refs[3:]
    q_ids_ref, k_ids_ref = refs[:2] if segments else (None, None)
    refs = refs[2:] if segments else refs
    tile_refs, row_refs = refs[:num_tiles - 1], refs[num_tiles - 1:num_tiles - 1 + num_rows]
    tile_out_refs = refs[num_tiles - 1 + num_rows:num_tiles - 1 + num_rows + len(tiles_out)]
    row_out_refs = refs[num_tiles - 1 + num_rows + len(tiles_out):]
    tile_refs = (q_ref, *tile_refs)
    batch, head = lax.axis_index("batch"), lax.axis_index("heads")
    # Causal CTAs near the end see the most keys: launching them first balances the SMs.
    cta = lax.axis_index("q_blocks")
    if mask.causal:
      cta = num_ctas - 1 - cta
    kv_head = lax.div(head, group)
    first, end = mask.key_blocks(cta, cta_rows, block_k)  # Both warpgroups' keys.

    def slot_of(j):
      return lax.rem(j - first, slots)

    def key_ids(smem, slot):  # A ring slot's key ids; the row after the ring holds query ids.
      return smem["ids"].at[slot, pl.ds(0, block_k)]

    def compute(smem, barriers):
      wg = lax.axis_index("wg")
      q_block = cta * _COMPUTE_WARPGROUPS + wg
      rows = pl.ds(q_block * block_q, block_q)
      tile_smem = [smem["tiles"].at[wg, i] for i in range(num_tiles)]
      ready = barriers["tiles_ready"]
      for i, ref in enumerate(tile_refs):
        plgpu.copy_gmem_to_smem(ref.at[batch, rows, head], tile_smem[i],
                                ready.at[wg * (num_tiles + num_rows) + i])
      for i, ref in enumerate(row_refs):
        plgpu.copy_gmem_to_smem(ref.at[batch, head, rows], smem["rows"].at[wg, i],
                                ready.at[wg * (num_tiles + num_rows) + num_tiles + i])
      q_ids = None
      if segments:
        q_ids = ops.held_ids(smem, wg, q_ids_ref.at[batch, rows], barriers["q_ids_ready"].at[wg])
      for i in range(num_tiles + num_rows):
        plgpu.barrier_wait(ready.at[wg * (num_tiles + num_rows) + i])
      row_values = [ops.load(smem["rows"].at[wg, i], rows_layout) for i in range(num_rows)]
      q_row, k_col = ops.iota(0) + q_block * block_q, ops.iota(1)

      def masked(logits, j, slot):
        k_ids = None
        if segments:
          k_ids = lax.broadcast_in_dim(ops.load(key_ids(smem, slot), keys_layout), logits.shape,
                                       [1])
        visible = mask.visible(q_row, k_col + j * block_k, q_ids, k_ids)
        return jnp.where(visible, logits, -jnp.inf)

      walk = _Walk(
          tiles=tile_smem, rows=row_values, rows_layout=rows_layout, laid_out=ops.laid_out,
          matmul=functools.partial(ops.matmul, smem, wg),
          transposed=functools.partial(ops.transposed, smem, wg), masked=masked,
          keys=lambda slot: smem["k"].at[slot], values=lambda slot: smem["v"].at[slot],
          wait_values=lambda slot: plgpu.barrier_wait(barriers["value_ready"].at[slot]),
          release_keys=lambda slot: plgpu.barrier_arrive(barriers["key_free"].at[slot]),
          release_values=lambda slot: plgpu.barrier_arrive(barriers["value_free"].at[slot]))

      def wait_keys(slot):
        plgpu.barrier_wait(barriers["key_ready"].at[slot])
        if segments:
          plgpu.barrier_wait(barriers["key_ids_ready"].at[slot])

      def attend(j, carry, masked):
        slot = slot_of(j)
        wait_keys(slot)
        return step(walk, j, slot, carry, masked)

      def skip(j, carry):  # A block of the CTA this warpgroup's queries do not see.
        slot = slot_of(j)
        wait_keys(slot)
        walk.release_keys(slot)
        walk.wait_values(slot)
        walk.release_values(slot)
        return carry

      # An empty range (rows of padding) may sit anywhere: clip it into the CTA's.
      own_first, own_end = inside_range(*mask.key_blocks(q_block, block_q, block_k), first, end)
      full_first, full_end = inside_range(*mask.unmasked_key_blocks(q_block, block_q, block_k),
                                          own_first, own_end)
      carry = lax.fori_loop(first, own_first, skip, init(walk))
      for start, stop, is_masked in ((own_first, full_first, True), (full_first, full_end, False),
                                     (full_end, own_end, True)):
        carry = lax.fori_loop(start, stop, functools.partial(attend, masked=is_masked), carry)
      carry = lax.fori_loop(own_end, end, skip, carry)
      results, result_rows = finish(walk, carry)
      for i, (result, ref) in enumerate(zip(results, tile_out_refs)):
        smem["tiles"].at[wg, i][...] = result  # The inputs' tiles are read no more.
      for i, row in enumerate(result_rows):
        smem["rows"].at[wg, i][...] = row
      plgpu.commit_smem()
      for i, ref in enumerate(tile_out_refs):
        plgpu.copy_smem_to_gmem(smem["tiles"].at[wg, i], ref.at[batch, rows, head])
      for i, ref in enumerate(row_out_refs):
        plgpu.copy_smem_to_gmem(smem["rows"].at[wg, i], ref.at[batch, head, rows])
      plgpu.wait_smem_to_gmem(0)

    def stream(smem, barriers):  # The memory warpgroup: fills the ring, one slot per key block.
      @pl.loop(first, end)
      def _(j):
        slot, keys = slot_of(j), pl.ds(j * block_k, block_k)
        refill = j - first >= slots

        @pl.when(refill)
        def _():
          plgpu.barrier_wait(barriers["key_free"].at[slot])

        plgpu.copy_gmem_to_smem(k_ref.at[batch, keys, kv_head], smem["k"].at[slot],
                                barriers["key_ready"].at[slot])
        if segments:
          plgpu.copy_gmem_to_smem(k_ids_ref.at[batch, keys], key_ids(smem, slot),
                                  barriers["key_ids_ready"].at[slot])

        @pl.when(refill)
        def _():
          plgpu.barrier_wait(barriers["value_free"].at[slot])

        plgpu.copy_gmem_to_smem(v_ref.at[batch, keys, kv_head], smem["v"].at[slot],
                                barriers["value_ready"].at[slot])

      # Observe the releases of the last blocks too: every waiter of a barrier must see each of
      # its phases (and the CTA's shared memory outlives every read of it).
      @pl.loop(jnp.maximum(first, end - slots), end)
      def _(j):
        plgpu.barrier_wait(barriers["key_free"].at[slot_of(j)])
        plgpu.barrier_wait(barriers["value_free"].at[slot_of(j)])

    smem = {"tiles": plgpu.SMEM((_COMPUTE_WARPGROUPS, max(num_tiles, len(tiles_out)), block_q, h),
                                query.dtype, transforms=tiles),
            "k": plgpu.SMEM((slots, block_k, h), key.dtype, transforms=tiles),
            "v": plgpu.SMEM((slots, block_k, h), value.dtype, transforms=tiles),
            "rows": plgpu.SMEM((_COMPUTE_WARPGROUPS, max(num_rows, rows_out, 1), block_q),
                               jnp.float32)}
    barriers = {"tiles_ready": plgpu.Barrier(
                    num_barriers=_COMPUTE_WARPGROUPS * (num_tiles + num_rows)),
                "key_ready": plgpu.Barrier(num_barriers=slots),
                "value_ready": plgpu.Barrier(num_barriers=slots),
                # Both compute warpgroups release a slot before it is refilled.
                "key_free": plgpu.Barrier(num_arrivals=_COMPUTE_WARPGROUPS, num_barriers=slots),
                "value_free": plgpu.Barrier(num_arrivals=_COMPUTE_WARPGROUPS,
                                            num_barriers=slots)}
    smem.update(ops.buffers(query.dtype, h, tiles))
    if segments:
      # One buffer: a ring slot of key ids per key block, then a row of both warpgroups' query
      # ids. (Two int32 buffers deadlock JAX 0.11's Mosaic GPU interpreter.)
      smem["ids"] = plgpu.SMEM((slots + 1, max(block_k, cta_rows)), jnp.int32)
      barriers["q_ids_ready"] = plgpu.Barrier(num_barriers=_COMPUTE_WARPGROUPS)
      barriers["key_ids_ready"] = plgpu.Barrier(num_barriers=slots)
    pl.run_scoped(_specialized(compute, stream), smem, barriers, collective_axes="wg")

  kernel.__name__ = name  # Remat policies find the forward kernel by name.
  inputs = (query, key, value, *((query_ids, key_ids) if segments else ()), *tiles_in[1:],
            *rows_in)
  return _launch(kernel, inputs, [*((query.shape, dtype) for dtype in tiles_out),
                                  *[((b, n, t), jnp.float32)] * rows_out],
                 (n, num_ctas, b), ("heads", "q_blocks", "batch"), interpret)
