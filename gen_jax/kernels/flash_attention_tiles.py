"""Tiles of the flash-attention kernels (Dao et al., 2022; FlashAttention-2, 2023).

A kernel walks tiles: a block of `block_q` queries against a block of `block_k` keys. Causality, the
sliding window and the true (unpadded) lengths say which tiles hold a key that some query sees (the
others are skipped) and which hold only keys that every query sees (those run without a mask).
The same predicate decides in the forward and backward passes, so probabilities recomputed from the
saved log-sum-exp cover exactly the keys the forward pass summed over.
"""
import dataclasses

import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class TileMask:
  """Which keys a query sees; query and key positions both count from 0.

  Attributes:
    causal: a query sees keys at positions <= its own.
    sliding_window: a query sees keys with q_pos - k_pos < sliding_window (None: no limit).
    query_length, key_length: the true t and s; positions past them are padding, which sees
      nothing and is seen by nothing.
    has_segments: segment ids take part, so no tile can skip the elementwise mask.
  """
  causal: bool
  sliding_window: int | None
  query_length: int
  key_length: int
  has_segments: bool

  def visible(self, q_pos, k_pos, q_ids=None, k_ids=None) -> jax.Array:
    """Bool array, the broadcast of the int arrays q_pos and k_pos (and ids): query sees key."""
    visible = (k_pos < self.key_length) & (q_pos < self.query_length)
    if self.causal:
      visible &= k_pos <= q_pos
    if self.sliding_window is not None:
      visible &= q_pos - k_pos < self.sliding_window
    if self.has_segments:
      visible &= (q_ids == k_ids) & (q_ids != 0)
    return visible

  def key_blocks(self, q_block, block_q: int, block_k: int):
    """(first, end): the key blocks holding a key that some query of block `q_block` sees."""
    q_first = q_block * block_q
    q_last = jnp.minimum(q_first + block_q - 1, self.query_length - 1)
    # The rows' visible key intervals slide by one per row, so their union is one interval.
    k_first, k_last = 0, self.key_length - 1
    if self.sliding_window is not None:
      k_first = jnp.maximum(q_first - self.sliding_window + 1, 0)
    if self.causal:
      k_last = jnp.minimum(k_last, q_last)
    return _blocks_of_interval(k_first, k_last, block_k, _one_if_less(q_first, self.query_length))

  def unmasked_key_blocks(self, q_block, block_q: int, block_k: int):
    """(first, end) inside `key_blocks`: blocks whose every key every query of the block sees."""
    first, end = self.key_blocks(q_block, block_q, block_k)
    if self.has_segments:
      return end, end
    q_first = q_block * block_q
    q_last = q_first + block_q - 1
    full_end = self.key_length // block_k * _one_if_less(q_last, self.query_length)
    if self.causal:
      full_end = jnp.minimum(full_end, lax.div(q_first + 1, block_k))
    full_first = first
    if self.sliding_window is not None:
      full_first = jnp.maximum(
          first, _cdiv(jnp.maximum(q_last - self.sliding_window + 1, 0), block_k))
    return _inside(full_first, full_end, first, end)

  def query_blocks(self, k_block, block_q: int, block_k: int):
    """(first, end): the query blocks holding a query that sees some key of block `k_block`."""
    k_first = k_block * block_k
    k_last = jnp.minimum(k_first + block_k - 1, self.key_length - 1)
    q_first, q_last = (k_first if self.causal else 0), self.query_length - 1
    if self.sliding_window is not None:
      q_last = jnp.minimum(q_last, k_last + self.sliding_window - 1)
    return _blocks_of_interval(q_first, q_last, block_q, _one_if_less(k_first, self.key_length))

  def unmasked_query_blocks(self, k_block, block_q: int, block_k: int):
    """(first, end) inside `query_blocks`: blocks whose every query sees every key of the block."""
    first, end = self.query_blocks(k_block, block_q, block_k)
    if self.has_segments:
      return end, end
    k_first = k_block * block_k
    k_last = k_first + block_k - 1
    full_end = self.query_length // block_q * _one_if_less(k_last, self.key_length)
    if self.sliding_window is not None:
      full_end = jnp.minimum(full_end, lax.div(k_first + self.sliding_window, block_q))
    full_first = first
    if self.causal:
      full_first = jnp.maximum(first, _cdiv(k_last, block_q))
    return _inside(full_first, full_end, first, end)


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
  """Everything static about one flash-attention call (hashable: a custom_vjp static argument)."""
  mask: TileMask
  scale: float
  blocks: KernelBlocks
  interpret: bool


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
  """(first block, end block) covering positions [first, last] if nonempty (0 or 1), else empty."""
  end = (lax.div(last, block) + 1) * nonempty * _one_if_less(first, last + 1)
  return jnp.minimum(lax.div(first, block), end), end


def _inside(full_first, full_end, first, end):
  full_first = jnp.clip(full_first, first, end)
  return full_first, jnp.clip(full_end, full_first, end)
