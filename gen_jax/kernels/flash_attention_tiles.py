"""Tiles of the flash-attention kernels (Dao et al., 2022; FlashAttention-2, 2023).

A kernel walks tiles: a block of `block_q` queries against a block of `block_k` keys. Causality, the
sliding window and the true (unpadded) lengths say which tiles hold a key that some query sees (the
others are skipped) and which hold only keys that every query sees (those run without a mask).
The same predicate decides in the forward and backward passes, so probabilities recomputed from the
saved log-sum-exp cover exactly the keys the forward pass summed over. Queries may start further
along the keys (a query offset, static or known only at run time): the tile ranges are integer
expressions that take either, so the kernels walk the same tiles for both.
"""
import dataclasses

import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class TileMask:
  """Which keys a query sees: query row r sits at position query_offset + r among the keys.

  Rows and key positions count from 0. Every method takes `offset`, the run-time offset (a traced
  int32 scalar) that stands in for query_offset when that is None; a static query_offset ignores it.

  Attributes:
    causal: a query sees keys at positions <= its own.
    sliding_window: a query sees keys with q_pos - k_pos < sliding_window (None: no limit).
    query_length, key_length: the true t and s; rows and keys past them are padding, which sees
      nothing and is seen by nothing, whatever the offset.
    has_segments: segment ids take part, so no tile can skip the elementwise mask.
    query_offset: the position of query row 0 among the keys, a Python int, or None when the
      kernels read it at run time (it matters only to causal and sliding-window masks).
  """
  causal: bool
  sliding_window: int | None
  query_length: int
  key_length: int
  has_segments: bool
  query_offset: int | None = 0

  @property
  def dynamic_offset(self) -> bool:
    """The kernels take the offset as a run-time scalar input."""
    return self.query_offset is None

  def offset(self, offset=None):
    """The static query_offset, else the run-time `offset`."""
    if self.query_offset is not None:
      return self.query_offset
    if offset is None:
      raise ValueError("this TileMask reads its query offset at run time: pass `offset`")
    return offset

  def visible(self, q_row, k_pos, q_ids=None, k_ids=None, offset=None) -> jax.Array:
    """Bool array, the broadcast of the int arrays q_row and k_pos (and ids): query sees key."""
    visible = (k_pos < self.key_length) & (q_row < self.query_length)
    if self.causal or self.sliding_window is not None:
      q_pos = q_row + self.offset(offset)
      if self.causal:
        visible &= k_pos <= q_pos
      if self.sliding_window is not None:
        visible &= q_pos - k_pos < self.sliding_window
    if self.has_segments:
      visible &= (q_ids == k_ids) & (q_ids != 0)
    return visible

  def key_blocks(self, q_block, block_q: int, block_k: int, offset=None):
    """(first, end): the key blocks holding a key that some query of block `q_block` sees."""
    offset = self.offset(offset)
    q_first = q_block * block_q
    q_last = jnp.minimum(q_first + block_q - 1, self.query_length - 1)
    # The rows' visible key intervals slide by one per row, so their union is one interval.
    k_first, k_last = 0, self.key_length - 1
    if self.sliding_window is not None:
      k_first = jnp.maximum(q_first + offset - self.sliding_window + 1, 0)
    if self.causal:
      k_last = jnp.minimum(k_last, q_last + offset)
    return _blocks_of_interval(k_first, k_last, block_k, _one_if_less(q_first, self.query_length))

  def unmasked_key_blocks(self, q_block, block_q: int, block_k: int, offset=None):
    """(first, end) inside `key_blocks`: blocks whose every key every query of the block sees."""
    offset = self.offset(offset)
    first, end = self.key_blocks(q_block, block_q, block_k, offset)
    if self.has_segments:
      return end, end
    q_first = q_block * block_q
    q_last = q_first + block_q - 1
    full_end = self.key_length // block_k * _one_if_less(q_last, self.query_length)
    if self.causal:  # Keys up to the block's first query position: clamp before a truncating div.
      full_end = jnp.minimum(full_end, lax.div(jnp.maximum(q_first + offset + 1, 0), block_k))
    full_first = first
    if self.sliding_window is not None:
      full_first = jnp.maximum(
          first, _cdiv(jnp.maximum(q_last + offset - self.sliding_window + 1, 0), block_k))
    return inside_range(full_first, full_end, first, end)

  def query_blocks(self, k_block, block_q: int, block_k: int, offset=None):
    """(first, end): the query blocks holding a query that sees some key of block `k_block`."""
    offset = self.offset(offset)
    k_first = k_block * block_k
    k_last = jnp.minimum(k_first + block_k - 1, self.key_length - 1)
    q_first, q_last = 0, self.query_length - 1  # Rows, not positions.
    if self.causal:
      q_first = jnp.maximum(k_first - offset, 0)
    if self.sliding_window is not None:
      q_last = jnp.minimum(q_last, k_last + self.sliding_window - 1 - offset)
    return _blocks_of_interval(q_first, q_last, block_q, _one_if_less(k_first, self.key_length))

  def unmasked_query_blocks(self, k_block, block_q: int, block_k: int, offset=None):
    """(first, end) inside `query_blocks`: blocks whose every query sees every key of the block."""
    offset = self.offset(offset)
    first, end = self.query_blocks(k_block, block_q, block_k, offset)
    if self.has_segments:
      return end, end
    k_first = k_block * block_k
    k_last = k_first + block_k - 1
    full_end = self.query_length // block_q * _one_if_less(k_last, self.key_length)
    if self.sliding_window is not None:
      full_end = jnp.minimum(
          full_end, lax.div(jnp.maximum(k_first + self.sliding_window - offset, 0), block_q))
    full_first = first
    if self.causal:
      full_first = jnp.maximum(first, _cdiv(jnp.maximum(k_last - offset, 0), block_q))
    return inside_range(full_first, full_end, first, end)


@dataclasses.dataclass(frozen=True)
class KernelBlocks:
  """Tile sizes (block_q, block_k) of each kernel, and the padded lengths they all divide."""
  forward: tuple[int, int]
  dkdv: tuple[int, int]
  dq: tuple[int, int]
  padded_query_length: int
  padded_key_length: int
  padded_head_dim: int


@dataclasses.dataclass(frozen=True)
class FlashConfig:
  """Everything static about one flash-attention call (hashable: a custom_vjp static argument).

  num_warps / num_stages: Triton's warps per program and software-pipelining depth for every GPU
  kernel (None: the kernels' defaults); dq_atomic: the GPU backward's dQ by atomic adds from the
  dK/dV kernel (flash_attention's argument); key_splits: the GPU forward's parts per query
  block's keys (None: its choice, `flash_attention_gpu.key_splits`); the TPU kernels have none
  of these settings. result_dtype:
  the dtype of the kernels' results (out; dq, dk, dv) by name, None for their inputs'
  (`result_type`)."""
  mask: TileMask
  scale: float
  blocks: KernelBlocks
  interpret: bool
  num_warps: int | None = None
  num_stages: int | None = None
  dq_atomic: bool = False
  result_dtype: str | None = None
  key_splits: int | None = None


def result_type(config: FlashConfig, like: jax.Array):
  """The dtype of a kernel result that takes after input `like` (out after value, dq after query,
  dk and dv after key and value), unless the call asked for config.result_dtype."""
  return jnp.dtype(config.result_dtype) if config.result_dtype else like.dtype


def output_struct(shape, dtype, *inputs) -> jax.ShapeDtypeStruct:
  """A kernel output's type. Inside shard_map (with check_vma, the default) pallas_call must be
  told which manual mesh axes its outputs vary over: every axis any input (None: absent) does."""
  varying = frozenset().union(*(jax.typeof(x).manual_axis_type.varying
                                for x in inputs if x is not None))
  return jax.ShapeDtypeStruct(shape, dtype,
                              manual_axis_type=jax.sharding.ManualAxisType(varying=varying))


def vary_like(result, *inputs):
  """`result` marked as varying over every manual mesh axis any input (None: absent) does: a
  kernel whose call does not carry output_struct's axes into its result's type (Mosaic GPU's)."""
  varying = frozenset().union(*(jax.typeof(x).manual_axis_type.varying
                                for x in inputs if x is not None))
  missing = tuple(sorted(varying - jax.typeof(result).manual_axis_type.varying))
  return jax.lax.pcast(result, missing, to="varying") if missing else result


def clamp_block(index, first, end):
  """`index` moved into [first, end), or a valid neighbour when the range is empty.

  Index maps of skipped tiles point at a block that is fetched anyway, so the pipeline issues no
  copy for them.
  """
  return jnp.maximum(jnp.minimum(jnp.maximum(index, first), end - 1), 0)


def _cdiv(a, b: int):
  return lax.div(a + b - 1, b)


def _one_if_less(a, b):
  """1 where a < b, else 0, as an int: Triton lowers a select between scalar literals wrongly."""
  return jnp.clip(b - a, 0, 1)


def _blocks_of_interval(first, last, block: int, nonempty):
  """(first block, end block) covering positions [first, last] if nonempty (0 or 1), else empty.

  An interval past either end (last < 0 with a query offset) is empty: a negative last divides
  towards 0, but the factor _one_if_less(first >= 0, last + 1) is then 0.
  """
  end = (lax.div(last, block) + 1) * nonempty * _one_if_less(first, last + 1)
  return jnp.minimum(lax.div(first, block), end), end


def inside_range(full_first, full_end, first, end):
  """The block range [full_first, full_end) clipped into [first, end)."""
  full_first = jnp.clip(full_first, first, end)
  return full_first, jnp.clip(full_end, full_first, end)


def dot_nt(a, b):
  """a [m, h] @ b [n, h]^T, accumulated in float32 (both kernels' score products)."""
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def dot(a, b):
  """a [m, n] @ b [n, h], accumulated in float32."""
  return jnp.dot(a, b, preferred_element_type=jnp.float32)


def dot_tn(a, b):
  """a [n, m]^T @ b [n, h], accumulated in float32 (dQ from the key-major dS^T tiles)."""
  return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
