"""Ring attention (Liu, Zaharia and Abbeel, 2023): sequence-parallel attention in which a device
never holds more than one shard of the keys and values.

Runs inside `shard_map` with the length split over mesh `axes`. Each device keeps its queries; the
key/value shards travel round the ring of devices, one hop per step, and each step attends the
local queries to the visiting shard with a block function that also returns the log-sum-exp of
its logits. Block results combine exactly by their log-sum-exps (the online softmax of flash
attention, one level up). The backward pass walks the ring again: with the total output and
log-sum-exp every block's probabilities are recomputed exactly, each step adds the block's share
of dq locally, and dk, dv accumulate on the travelling shard; after the last block one permute
sends them home.

Against all-gathering the keys and values, memory per device for keys and values falls from the
whole length to one shard, and the XLA blocks' [t/N, t] logits to [t/N, t/N]; each hop's transfer
is independent of that step's block, so XLA can overlap them. Causal masking makes the load uneven
(device i attends to i + 1 shards; shards wholly in a query shard's future are skipped, so are
shards wholly outside a sliding window, so the last device works N times as long as the first).
A sequence in stripe order (`to_stripes`: device i holds positions i, i + N, ...; Brandon et
al., 2023) balances it: every step gives every device about half a block (the Pallas kernels
skip the masked half; the XLA blocks compute whole blocks either way, so they gain nothing). The
model puts its tokens and positions in stripe order and its hidden states back
(model.sequence_parallel="striped_ring"); only attention sees the difference, through the mask of
each step.

Letters: b batch, t/s local query/key length, n/k query/kv heads, g = n // k, h head_dim.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from gen_jax.ops.attention import attention_mask, call_settings, grouped_logits, pallas_target
from gen_jax.parallel import context as parallel_context


@dataclasses.dataclass(frozen=True)
class RingOptions:
  """What is static about one ring attention call (hashable: a custom_vjp static argument)."""
  axes: tuple[str, ...]  # Mesh axes the length is split over, in the order of its shards.
  num_shards: int  # The product of their sizes.
  causal: bool
  sliding_window: int | None
  scale: float
  impl: str  # The block function: "xla" or "pallas".
  settings: tuple = ()  # "pallas" blocks: ops.split_impl's kernel settings, as (name, value)s.
  striped: bool = False  # The sequence is in stripe order (to_stripes); causal, no window.
  visits: int = 0  # Shards each device attends to, its own first (set by ring_attention).


def ring_attention(query, key, value, options: RingOptions, segment_ids=None,
                   key_segment_ids=None, query_offset: int | jax.Array = 0) -> jax.Array:
  """This device's shard of attention over the whole (split) length; call inside shard_map.

  Args:
    query: [b, t, n, h], this device's queries (shard i of the `options.axes` ring).
    key, value: [b, s, k, h], this device's keys and values.
    options: RingOptions.
    segment_ids: [b, t] int or None; key_segment_ids: [b, s] int (required with segment_ids).
    query_offset: the position of the first query of the whole sequence among the keys.
  Returns:
    [b, t, n, h] in value's dtype, equal to `ops.attention` on the unsplit arrays.
  """
  if options.impl not in _BLOCKS:
    raise ValueError(f"ring attention runs blocks of {tuple(_BLOCKS)} attention, not "
                     f"{options.impl!r} (cuDNN's returns no log-sum-exp)")
  options = dataclasses.replace(options, visits=_visits(options, query.shape[1], key.shape[1],
                                                        query_offset))
  offset = jnp.asarray(query_offset, jnp.int32)
  return _ring(options, query, key, value, segment_ids, key_segment_ids, offset)


def _visits(options, t, s, query_offset) -> int:
  """How many shards, counting back from its own, hold keys a device's queries may see: with a
  causal sliding window of W over shards of s positions, ceil((W - 1) / s) + 1, so the ring stops
  after that many hops (Mistral's 4k window over 32k tokens on 8 devices: 2 of 8); else all."""
  if (options.causal and options.sliding_window is not None and not options.striped
      and isinstance(query_offset, int) and query_offset == 0 and t == s):
    return min(options.num_shards, -(-(options.sliding_window - 1) // s) + 1)
  return options.num_shards


def sequence_shards(batch: int, length: int) -> int:
  """The shards the active mesh and logical rules split a [batch, length] activation's length
  into (1 without a mesh): the stripes of `to_stripes` for attention under that mesh."""
  mesh = parallel_context.active_mesh()
  if mesh is None:
    return 1
  spec = parallel_context.logical_spec(("batch", "length"), (batch, length), mesh)
  return math.prod(mesh.shape[a] for a in parallel_context.spec_axes(spec, 1))


def to_stripes(x: jax.Array, shards: int) -> jax.Array:
  """[b, t, ...] in stripe order for `shards` contiguous shards of the length: shard i holds
  positions i, i + shards, i + 2 shards, ... (Brandon et al., 2023, Striped Attention). Every shard
  then holds early and late positions alike, so causal attention costs each the same."""
  if shards == 1:
    return x
  b, t = x.shape[:2]
  return x.reshape(b, t // shards, shards, *x.shape[2:]).swapaxes(1, 2).reshape(x.shape)


def from_stripes(x: jax.Array, shards: int) -> jax.Array:
  """The inverse of `to_stripes`: [b, t, ...] back in position order."""
  if shards == 1:
    return x
  b, t = x.shape[:2]
  return x.reshape(b, shards, t // shards, *x.shape[2:]).swapaxes(1, 2).reshape(x.shape)


def _xla_block(query, key, value, query_ids, key_ids, offset, options):
  """Attention to one key block: (out [b, t, n, h] float32, lse [b, n, t], -inf for no key)."""
  logits, visible = _block_logits(query, key, query_ids, key_ids, offset, options)
  lse = jax.nn.logsumexp(jnp.where(visible, logits, -jnp.inf), axis=-1)  # [b, k, g, t]
  probs = _probabilities(logits, visible, lse)
  out = jnp.einsum("bkgts,bskh->btkgh", probs, value.astype(jnp.float32))
  return out.reshape(query.shape), lse.reshape(lse.shape[0], -1, lse.shape[-1])


def _xla_block_backward(query, key, value, query_ids, key_ids, offset, out, lse, d_out, options):
  """(dq, dk, dv) float32 of one key block, from the total `out` and `lse` (see the module doc)."""
  b, t, n, h = query.shape
  k = key.shape[2]
  logits, visible = _block_logits(query, key, query_ids, key_ids, offset, options)
  probs = _probabilities(logits, visible, lse.reshape(b, k, n // k, t))
  d_out = d_out.astype(jnp.float32).reshape(b, t, k, n // k, h)
  d_value = jnp.einsum("bkgts,btkgh->bskh", probs, d_out)
  d_probs = jnp.einsum("btkgh,bskh->bkgts", d_out, value.astype(jnp.float32))
  # sum_s P dP = dO . O: the softmax's Jacobian needs only the total output.
  delta = jnp.einsum("btkgh,btkgh->bkgt", d_out, out.astype(jnp.float32).reshape(d_out.shape))
  d_logits = probs * (d_probs - delta[..., None]) * options.scale
  d_query = jnp.einsum("bkgts,bskh->btkgh", d_logits, key.astype(jnp.float32))
  d_key = jnp.einsum("bkgts,btkgh->bskh", d_logits,
                     query.astype(jnp.float32).reshape(b, t, k, n // k, h))
  return d_query.reshape(query.shape), d_key, d_value


def _block_logits(query, key, query_ids, key_ids, offset, options):
  """(scaled logits [b, k, g, t, s] float32, visible: bool broadcastable to them)."""
  logits = grouped_logits(query, key, options.scale)
  mask = attention_mask(query.shape[1], key.shape[1], causal=options.causal,
                        query_segment_ids=query_ids, key_segment_ids=key_ids,
                        query_offset=offset, sliding_window=options.sliding_window)
  return logits, (True if mask is None else mask[:, None, None])


def _probabilities(logits, visible, lse):
  """exp(logits - lse) where visible, else 0; lse [b, k, g, t] (-inf: the row sees nothing)."""
  shift = jnp.where(jnp.isneginf(lse), 0.0, lse)[..., None]
  return jnp.where(visible, jnp.exp(logits - shift), 0.0)


def _pallas_block(query, key, value, query_ids, key_ids, offset, options):
  from gen_jax import kernels  # Pallas lowering is only loaded by code that runs a kernel.
  return kernels.flash_attention_with_lse(query, key, value, **_pallas_options(
      query_ids, key_ids, offset, options), **call_settings(dict(options.settings), "forward"))


def _pallas_block_backward(query, key, value, query_ids, key_ids, offset, out, lse, d_out,
                           options):
  from gen_jax import kernels
  return kernels.flash_attention_backward(query, key, value, out, lse, d_out, **_pallas_options(
      query_ids, key_ids, offset, options), **call_settings(dict(options.settings), "backward"))


def _pallas_options(query_ids, key_ids, offset, options):
  # float32 blocks, as the XLA blocks give: each is rounded only once merged (bf16 blocks doubled
  # the error of a bf16 ring's output).
  return dict(causal=options.causal, segment_ids=query_ids, key_segment_ids=key_ids,
              query_offset=offset, sliding_window=options.sliding_window, scale=options.scale,
              result_dtype=jnp.float32, **pallas_target())


# impl: (forward block, backward block).
_BLOCKS = {"xla": (_xla_block, _xla_block_backward),
           "pallas": (_pallas_block, _pallas_block_backward)}


def _chunk_offset(options, offset, t, s, hop):
  """(the visiting keys' query offset, whether any query may see any of them) after `hop` hops:
  the keys are shard (i - hop) mod N of the ring, for this device's shard i."""
  i = lax.axis_index(options.axes)
  source = lax.rem(i - hop + options.num_shards, options.num_shards)
  if options.striped:
    # Local row r is position r N + i, key c is c N + source: c N + source <= r N + i holds for
    # c <= r when source <= i and for c <= r - 1 otherwise, a causal mask offset by 0 or -1.
    chunk_offset = jnp.where(source <= i, 0, -1)
  else:
    chunk_offset = offset + i * t - source * s
  sees = jnp.bool_(True)
  if options.causal:  # The last query is not before the first key.
    sees &= chunk_offset + t - 1 >= 0
  if options.sliding_window is not None:  # The first query is within the window of the last key.
    sees &= chunk_offset - (s - 1) < options.sliding_window
  return chunk_offset, sees


def _pass_on(tree, options, hops: int = 1):
  """Every array of `tree` sent `hops` along the ring: shard i's to shard i + hops."""
  hop = [(j, (j + hops) % options.num_shards) for j in range(options.num_shards)]
  return jax.tree.map(lambda x: lax.ppermute(x, options.axes, hop), tree)


def _merge(out, lse, block_out, block_lse):
  """Two partial softmaxes over disjoint keys combined: out [b, t, n, h], lse [b, n, t]."""
  total = jnp.logaddexp(lse, block_lse)
  shift = jnp.where(jnp.isneginf(total), 0.0, total)
  weight = lambda x: jnp.exp(x - shift).transpose(0, 2, 1)[..., None]  # [b, t, n, 1]
  return out * weight(lse) + block_out.astype(jnp.float32) * weight(block_lse), total


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(options, query, key, value, query_ids, key_ids, offset):
  return _ring_forward(options, query, key, value, query_ids, key_ids, offset)[0]


def _ring_forward(options, query, key, value, query_ids, key_ids, offset):
  block, _ = _BLOCKS[options.impl]
  t, s = query.shape[1], key.shape[1]

  def attend(hop, chunk, partial):
    chunk_offset, sees = _chunk_offset(options, offset, t, s, hop)
    def run(partial):
      chunk_key, chunk_value, chunk_ids = chunk
      return _merge(*partial, *block(query, chunk_key, chunk_value, query_ids, chunk_ids,
                                     chunk_offset, options))
    return lax.cond(sees, run, lambda partial: partial, partial)

  def hop(i, carry):
    chunk, partial = carry
    return _pass_on(chunk, options), attend(i, chunk, partial)  # Both start from `chunk`.

  b, _, n, h = query.shape
  chunk = (key, value, key_ids)  # A travelling shard: keys, values, segment ids (or None).
  partial = (jnp.zeros((b, t, n, h), jnp.float32), jnp.full((b, n, t), -jnp.inf, jnp.float32))
  chunk, partial = lax.fori_loop(0, options.visits - 1, hop, (chunk, partial))
  out, lse = attend(options.visits - 1, chunk, partial)
  out = out.astype(value.dtype)
  return out, (query, key, value, query_ids, key_ids, offset, out, lse)


def _ring_backward(options, residuals, d_out):
  query, key, value, query_ids, key_ids, offset, out, lse = residuals
  _, block_backward = _BLOCKS[options.impl]
  t, s = query.shape[1], key.shape[1]
  f32 = lambda x: jnp.zeros(x.shape, jnp.float32)

  def accumulate(hop, chunk, chunk_grads, d_query):
    """The visiting shard's block: its dk, dv added to those travelling with it, dq to ours."""
    chunk_key, chunk_value, chunk_ids = chunk
    chunk_offset, sees = _chunk_offset(options, offset, t, s, hop)
    grads = lax.cond(
        sees,
        lambda: tuple(g.astype(jnp.float32) for g in block_backward(
            query, chunk_key, chunk_value, query_ids, chunk_ids, chunk_offset, out, lse, d_out,
            options)),
        lambda: (f32(query), f32(key), f32(value)))
    return (chunk_grads[0] + grads[1], chunk_grads[1] + grads[2]), d_query + grads[0]

  def hop(i, carry):
    chunk, chunk_grads, d_query = carry
    chunk_grads, d_query = accumulate(i, chunk, chunk_grads, d_query)
    # The shard's gradients travel with it.
    return _pass_on(chunk, options), _pass_on(chunk_grads, options), d_query

  carry = ((key, value, key_ids), (f32(key), f32(value)), f32(query))
  chunk, chunk_grads, d_query = lax.fori_loop(0, options.visits - 1, hop, carry)
  (d_key, d_value), d_query = accumulate(options.visits - 1, chunk, chunk_grads, d_query)
  # The last shard's gradients, visits - 1 hops from home, jump back in one permute.
  if options.visits > 1:
    d_key, d_value = _pass_on((d_key, d_value), options, 1 - options.visits)
  return (d_query.astype(query.dtype), d_key.astype(key.dtype), d_value.astype(value.dtype),
          None, None, None)


_ring.defvjp(_ring_forward, _ring_backward)
