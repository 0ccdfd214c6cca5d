"""Scaled dot-product attention (Vaswani et al., 2017) with grouped-query heads (Ainslie et al., 2023).

One entry point, `attention`, chooses an implementation by name. Letters: b batch, t query length,
s key length, n query heads, k kv heads, g query heads per kv head, h head_dim.
"""
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from gen_jax.parallel import context as parallel_context

# xla: the reference below; pallas: gen_jax.kernels' flash attention (Mosaic on TPU, Triton on GPU,
# the Pallas interpreter elsewhere); cudnn: jax.nn.dot_product_attention's cuDNN kernel (GPU;
# packed documents by cuDNN's packed layout: Hopper or later, self-attention only); auto: on a
# GPU cudnn for the calls `cudnn_serves` (on an H200 it ran 1.25-1.8x the Pallas kernel,
# docs/BENCHMARKS.md) and pallas for the rest (packed documents, until the device has timed and
# checked cuDNN's packed layout; a cache offset), pallas on TPU, xla elsewhere.
# pallas_mosaic: on a GPU the flash kernels (forward, dK/dV, dQ) as Hopper kernels in Mosaic GPU
# (wgmma and TMA, kernels.flash_attention_mosaic_gpu), for the calls they take
# (`mosaic_serves`: training and prefill) and the Triton kernels for the rest (decoding steps
# against a cache); the Mosaic GPU interpreter on a CPU; no TPU. Not yet timed on a device.
ATTENTION_IMPLS = ("xla", "pallas", "pallas_mosaic", "cudnn", "auto")
# The implementations that run gen_jax.kernels' flash attention.
FLASH_IMPLS = ("pallas", "pallas_mosaic")
# Settings of the flash kernels that a flash impl can carry after colons, so that a config tunes
# its model's kernels ("pallas_mosaic:dq=atomic", "pallas:tiles=64x128:triton=4x2"): each gives
# arguments of kernels.flash_attention, on every kernel call of that attention.
FLASH_SETTINGS = {
    "tiles": "BQxBK: block_q, block_k",
    "triton": "WxS: num_warps, num_stages (the Triton kernels')",
    "dq": "atomic: dq_atomic (dQ from the dK/dV kernel)",
    "splits": "N: key_splits (the Triton forward's)",
}
# How attention runs when the `length` axis is split over mesh axes (sequence parallelism):
# all_gather: each device gathers every key and value; ring: they travel round the devices one
# shard at a time (gen_jax.ops.ring_attention), so no device holds more than one shard;
# striped_ring: the same over a sequence in stripe order (ops.to_stripes: device i holds positions
# i, i + N, ...), so causal masking gives every device the same work at every step.
SEQUENCE_PARALLEL = ("all_gather", "ring", "striped_ring")


def attention_mask(
    query_length: int,
    key_length: int,
    *,
    causal: bool,
    query_segment_ids: jax.Array | None = None,
    key_segment_ids: jax.Array | None = None,
    query_offset: int | jax.Array = 0,
    sliding_window: int | None = None,
) -> jax.Array | None:
  """Boolean mask [b or 1, t, s]: True where query t may attend to key s.

  Args:
    query_length, key_length: t and s.
    causal: query at position `query_offset + i` sees keys at positions <= it.
    query_segment_ids: [b, t] int; tokens attend only within their own segment (packed documents).
      Segment 0 marks padding and attends nowhere.
    key_segment_ids: [b, s] int; defaults to query_segment_ids.
    query_offset: position of the first query among the keys (for decoding after a prefix).
    sliding_window: if set, a query sees only the `sliding_window` most recent keys, itself
      included (q_pos - k_pos < sliding_window), as in Mistral (Jiang et al., 2023).
  """
  mask = None
  q_pos = jnp.arange(query_length)[:, None] + query_offset
  k_pos = jnp.arange(key_length)[None, :]
  if causal:
    mask = (k_pos <= q_pos)[None]
  if sliding_window is not None:
    recent = (q_pos - k_pos < sliding_window)[None]
    mask = recent if mask is None else mask & recent
  if query_segment_ids is not None:
    if key_segment_ids is None:
      key_segment_ids = query_segment_ids
    same = query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
    same &= (query_segment_ids != 0)[:, :, None]
    mask = same if mask is None else mask & same
  return mask


def grouped_logits(query: jax.Array, key: jax.Array, scale: float) -> jax.Array:
  """Scaled logits [b, k, g, t, s] float32 of query [b, t, n, h] against key [b, s, k, h]."""
  b, t, n, h = query.shape
  k = key.shape[2]
  query = query.reshape(b, t, k, n // k, h)  # [b, t, k, g, h]
  logits = jnp.einsum("btkgh,bskh->bkgts", query, key, preferred_element_type=jnp.float32)
  return logits * scale


def _xla_attention(query, key, value, mask, scale):
  logits = grouped_logits(query, key, scale)
  if mask is not None:
    mask = mask[:, None, None]  # [b, 1, 1, t, s]
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1)
  if mask is not None:
    # A query that may attend to nothing (padding) gets zeros, not a uniform average.
    weights = jnp.where(mask.any(axis=-1, keepdims=True), weights, 0.0)
  out = jnp.einsum("bkgts,bskh->btkgh", weights.astype(value.dtype), value)
  return out.reshape(query.shape)


def attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    causal: bool,
    segment_ids: jax.Array | None = None,
    key_segment_ids: jax.Array | None = None,
    query_offset: int | jax.Array = 0,
    sliding_window: int | None = None,
    scale: float | None = None,
    impl: str = "xla",
    sequence_parallel: str = "all_gather",
    key_layer: int | jax.Array | None = None,
) -> jax.Array:
  """Multi-head attention with grouped kv heads.

  Under a mesh (`jax.set_mesh`) with logical axis rules, the product runs in `shard_map`: batch and
  heads stay split as the rules split them, and when the `length` axis is split (sequence
  parallelism) each device keeps its queries and either all-gathers the keys and values or passes
  them round a ring (`sequence_parallel`), so activation memory per device shrinks with the
  `sequence` axis while the result equals the unsharded one.

  Args:
    query: [b, t, n, h], logical axes (batch, length, heads, head_dim).
    key, value: [b, s, k, h] with k dividing n (k == n is plain multi-head attention), logical axes
      (batch, length, kv_heads, head_dim).
    causal: mask future keys.
    segment_ids: [b, t] int, document ids of the queries (0 = padding); see `attention_mask`.
    key_segment_ids: [b, s] int; defaults to segment_ids.
    query_offset: position of the first query among the keys.
    sliding_window: attend only to the `sliding_window` most recent keys (None: no limit).
    scale: logit scale; defaults to 1/sqrt(h).
    impl: one of ATTENTION_IMPLS; a flash impl may carry FLASH_SETTINGS after colons
      (`split_impl`), e.g. "pallas_mosaic:dq=atomic".
    sequence_parallel: one of SEQUENCE_PARALLEL, for a length split over mesh axes. "ring" needs
      queries and keys split alike (self-attention; otherwise, e.g. a decoding step against a
      split cache, the keys are gathered) and runs "xla" or "pallas" blocks, not "cudnn".
      "striped_ring" says the caller put the sequence in stripe order (`to_stripes` with
      `sequence_shards`); self-attention only (query_offset 0), no sliding window.
    key_layer: key and value are stacks [layers, b, s, k, h] (a stacked KV cache in a decoding
      layer loop) and the call attends to layer key_layer's (an int32 scalar, traced or not). The
      Pallas GPU kernel reads that layer in place; other implementations, and a mesh of more than
      one device, attend to the slice (which XLA:GPU copies out every step for a kernel call).
  Returns:
    [b, t, n, h] in the dtype of `value`.
  """
  try:
    impl, settings = split_impl(impl)
  except ValueError as error:
    raise ValueError(f"attention impl: {error}") from None
  if sliding_window is not None and sliding_window < 1:
    raise ValueError(f"sliding_window must be positive or None, got {sliding_window}")
  if sequence_parallel not in SEQUENCE_PARALLEL:
    raise ValueError(f"sequence_parallel {sequence_parallel!r} is not one of {SEQUENCE_PARALLEL}")
  if key_layer is not None:
    if key.ndim != 5:
      raise ValueError(f"key_layer: key and value must be [layers, b, s, k, h] stacks, got "
                       f"{key.shape}")
    layer_shape = jax.ShapeDtypeStruct(key.shape[1:], key.dtype)
    in_place = (resolve_impl(impl, cudnn_serves=cudnn_serves(
        query, layer_shape, layer_shape, query_offset, segment_ids, causal)) in FLASH_IMPLS
                and pallas_target()["backend"] == "gpu" and sequence_parallel != "striped_ring"
                and getattr(parallel_context.active_mesh(), "size", 1) == 1)
    if in_place:
      from gen_jax import kernels
      return kernels.flash_attention_at_layer(
          query, key, value, key_layer, causal=causal, segment_ids=segment_ids,
          key_segment_ids=key_segment_ids, query_offset=query_offset,
          sliding_window=sliding_window, scale=scale, **call_settings(settings, "forward"),
          **pallas_target())
    key, value = (jax.lax.dynamic_index_in_dim(x, key_layer, keepdims=False) for x in (key, value))
  n, k = query.shape[2], key.shape[2]
  if n % k:
    raise ValueError(f"query heads {n} must be a multiple of kv heads {k}")
  striped = sequence_parallel == "striped_ring"
  if striped and (sliding_window is not None or not isinstance(query_offset, int)
                  or query_offset or query.shape[1] != key.shape[1]):
    raise ValueError("sequence_parallel 'striped_ring' is for self-attention over a whole "
                     "sequence (query_offset 0, keys as long as queries), without sliding_window")
  if segment_ids is not None and key_segment_ids is None:
    if query.shape[1] != key.shape[1]:
      raise ValueError("key_segment_ids is required when query and key lengths differ")
    key_segment_ids = segment_ids
  options = dict(causal=causal, sliding_window=sliding_window,
                 scale=query.shape[-1] ** -0.5 if scale is None else scale, impl=impl,
                 settings=settings)
  inputs = dict(query=query, key=key, value=value, query_offset=query_offset)
  if segment_ids is not None:
    inputs.update(segment_ids=segment_ids, key_segment_ids=key_segment_ids)
  mesh = parallel_context.active_mesh()
  if mesh is None:
    return _local_attention(**inputs, **options)
  return _sharded_attention(mesh, inputs, options, ring=sequence_parallel != "all_gather",
                            striped=striped)


def split_impl(impl: str) -> tuple[str, dict]:
  """`impl`'s implementation name and the kernels.flash_attention arguments its FLASH_SETTINGS
  give: "pallas_mosaic:tiles=64x128:dq=atomic" -> ("pallas_mosaic", {"block_q": 64,
  "block_k": 128, "dq_atomic": True}). Raises ValueError naming an unknown name or setting, or
  settings on an impl that runs no flash kernel (or, as "auto", not always)."""
  name, *settings = impl.split(":")
  if name not in ATTENTION_IMPLS:
    raise ValueError(f"{name!r} is not one of {ATTENTION_IMPLS}")
  if settings and name not in FLASH_IMPLS:
    raise ValueError(f"{impl!r}: settings after ':' are the flash kernels' ({FLASH_IMPLS}); "
                     f"{name!r} takes none")
  options, seen = {}, set()
  for setting in settings:
    key, _, value = setting.partition("=")
    if key in seen:
      raise ValueError(f"{impl!r}: setting {key!r} given twice")
    seen.add(key)
    try:
      if key in ("tiles", "triton"):
        first, second = map(int, value.split("x"))
        options.update({"block_q": first, "block_k": second} if key == "tiles"
                       else {"num_warps": first, "num_stages": second})
      elif key == "splits":
        options["key_splits"] = int(value)
      elif key == "dq" and value == "atomic":
        options["dq_atomic"] = True
      else:
        raise ValueError
    except ValueError:
      raise ValueError(f"{impl!r}: setting {setting!r} is not one of "
                       + ", ".join(f"{k}={v}" for k, v in FLASH_SETTINGS.items())) from None
  return name, options


def call_settings(settings: dict, call: str) -> dict:
  """Those of split_impl's `settings` that a kernel call takes: a "forward" one (not
  differentiated: a decoding step, a ring block's forward) all but dq_atomic, a "backward" one
  (kernels.flash_attention_backward) all but key_splits."""
  drop = {"forward": "dq_atomic", "backward": "key_splits"}[call]
  return {k: v for k, v in settings.items() if k != drop}


def resolve_impl(impl: str, platform: str | None = None, cudnn_serves: bool = False) -> str:
  """The implementation `impl` stands for on `platform` (default: the target platform,
  `parallel.context.target_platform`), for a call that cuDNN can serve or not (`cudnn_serves`)."""
  if impl != "auto":
    return impl
  platform = platform or parallel_context.target_platform()
  if platform == "gpu" and cudnn_serves:
    return "cudnn"
  return "pallas" if platform in ("tpu", "gpu") else "xla"


def cudnn_serves(query, key, value, query_offset, segment_ids, causal: bool) -> bool:
  """Whether jax.nn.dot_product_attention's cuDNN kernel computes this call: no segment ids, a
  static query offset of 0, bf16 or fp16 inputs, head_dim a multiple of 8 up to 128, and for a
  causal mask keys as long as the queries."""
  head_dim = query.shape[-1]
  return (segment_ids is None and isinstance(query_offset, int) and query_offset == 0
          and all(x.dtype in (jnp.bfloat16, jnp.float16) for x in (query, key, value))
          and head_dim % 8 == 0 and head_dim <= 128
          and not (causal and query.shape[1] != key.shape[1]))


def pallas_target(platform: str | None = None) -> dict:
  """kernels.flash_attention's backend and interpret arguments on `platform` (default: the target
  platform): the TPU or GPU kernel compiled there, the GPU kernel interpreted elsewhere."""
  platform = platform or parallel_context.target_platform()
  return {"backend": "tpu" if platform == "tpu" else "gpu",
          "interpret": platform not in ("tpu", "gpu")}


def mosaic_serves(query, query_offset) -> bool:
  """Whether impl "pallas_mosaic"'s Hopper kernels take this call: bf16 or fp16, head_dim
  up to 128, a static query offset (a decoding step's run-time one is the Triton kernel's)."""
  return (query.dtype in (jnp.bfloat16, jnp.float16) and query.shape[-1] <= 128
          and isinstance(query_offset, int))


def _flash_target(impl: str, query, query_offset) -> dict:
  """pallas_target for a flash impl ("pallas" or "pallas_mosaic"): "pallas_mosaic" swaps in the
  Mosaic GPU kernels where they serve the call."""
  target = pallas_target()
  if impl == "pallas_mosaic":
    if target["backend"] == "tpu":
      raise ValueError("impl 'pallas_mosaic' is a GPU (Hopper) kernel; on a TPU use 'pallas' or "
                       "'auto'")
    if mosaic_serves(query, query_offset):
      target["backend"] = "mosaic_gpu"
  return target


def _local_attention(query, key, value, query_offset, *, causal, sliding_window, scale, impl,
                     settings, segment_ids=None, key_segment_ids=None):
  impl = resolve_impl(impl, cudnn_serves=cudnn_serves(query, key, value, query_offset,
                                                      segment_ids, causal))
  if impl in FLASH_IMPLS:
    from gen_jax import kernels  # Pallas lowering is only loaded by code that runs a kernel.
    return kernels.flash_attention(
        query, key, value, causal=causal, segment_ids=segment_ids, key_segment_ids=key_segment_ids,
        query_offset=query_offset, sliding_window=sliding_window, scale=scale, **settings,
        **_flash_target(impl, query, query_offset))
  if impl == "cudnn":
    return _cudnn_attention(query, key, value, query_offset, causal=causal, scale=scale,
                            sliding_window=sliding_window, segment_ids=segment_ids)
  mask = attention_mask(query.shape[1], key.shape[1], causal=causal, query_segment_ids=segment_ids,
                        key_segment_ids=key_segment_ids, query_offset=query_offset,
                        sliding_window=sliding_window)
  return _xla_attention(query, key, value, mask, scale)


# The most documents per row cuDNN's packed layout is compiled for: its softmax statistics take
# [b * CUDNN_MAX_DOCUMENTS, n, t] float32 (128 MiB per layer for 16 rows of 2048 tokens, 32 heads),
# so it is a small bound, not t; a batch with a row of more runs the Pallas kernel instead.
CUDNN_MAX_DOCUMENTS = 32


def packed_documents(segment_ids: jax.Array,
                     max_documents: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """cuDNN's packed layout of the documents in each row: segment_ids [b, t] int, where a document
  is a run of equal nonzero ids (0: padding, in no document). Returns (lengths [b, M], offsets
  [b, M + 1], counts [b]) int32, M = max_documents: each row's first M documents' lengths and
  first positions in order, -1 past its last one (and in offsets' extra column), and how many
  documents each row holds (more than M: the rest are not listed)."""
  t = segment_ids.shape[1]
  previous = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)))  # Padding (0) before the row...
  following = jnp.pad(segment_ids[:, 1:], ((0, 0), (0, 1)))  # ...and after it.
  inside = segment_ids != 0
  is_start = inside & (segment_ids != previous)
  positions = jnp.arange(t, dtype=jnp.int32)
  # A document starts where the id changes to a nonzero one and ends where it changes after one;
  # sorting the marked positions lists the k-th start beside the k-th end.
  starts = jnp.sort(jnp.where(is_start, positions, t), axis=1)[:, :max_documents]
  ends = jnp.sort(jnp.where(inside & (segment_ids != following), positions + 1, t),
                  axis=1)[:, :max_documents]
  present = starts < t
  lengths = jnp.where(present, ends - starts, -1)
  offsets = jnp.pad(jnp.where(present, starts, -1), ((0, 0), (0, 1)), constant_values=-1)
  return (lengths.astype(jnp.int32), offsets.astype(jnp.int32),
          is_start.sum(axis=1, dtype=jnp.int32))


def _cudnn_attention(query, key, value, query_offset, *, causal, scale, sliding_window,
                     segment_ids):
  if not (isinstance(query_offset, int) and query_offset == 0):
    raise ValueError("impl 'cudnn' needs query_offset 0; use 'pallas' or 'xla'")
  if segment_ids is not None and query.shape[1] != key.shape[1]:
    raise ValueError("impl 'cudnn' masks segment_ids (packed documents) in self-attention only "
                     f"(queries as long as keys, got {query.shape[1]} and {key.shape[1]}); use "
                     "'pallas' or 'xla'")
  platform = parallel_context.target_platform()
  if platform != "gpu":
    raise ValueError(f"impl 'cudnn' runs on a GPU, not on {platform}; use 'auto', 'pallas' or "
                     "'xla'")
  window = None if sliding_window is None else (sliding_window - 1, 0)
  if segment_ids is None:
    return jax.nn.dot_product_attention(query, key, value, scale=scale, is_causal=causal,
                                        local_window_size=window, implementation="cudnn")
  return _cudnn_packed_attention(query, key, value, segment_ids, causal=causal, scale=scale,
                                 sliding_window=sliding_window)


def _cudnn_packed_attention(query, key, value, segment_ids, *, causal, scale, sliding_window):
  """Self-attention within packed documents by cuDNN's packed (ragged) layout, which JAX exposes
  only below jax.nn: query [b, t, n, h], key/value [b, t, k, h], segment_ids [b, t] (documents
  are runs of equal nonzero ids, as data.packing writes them; the k-th document of a row's
  queries meets the k-th of its keys). Needs a Hopper or later GPU. A batch with a row of more
  than CUDNN_MAX_DOCUMENTS documents runs the Pallas kernel (both are compiled, one runs). cuDNN
  leaves the tokens of no document (padding) undefined in the output and gradients: they are
  zeroed here, on the way in (so their gradients are dropped) and on the way out, as the other
  implementations give them."""
  from jax._src.cudnn import fused_attention_stablehlo as cudnn  # Packed layout: not in jax.nn.
  lengths, offsets, counts = packed_documents(segment_ids,
                                              min(CUDNN_MAX_DOCUMENTS, segment_ids.shape[1]))
  inside = (segment_ids != 0)[:, :, None, None]

  def by_cudnn(query, key, value):
    query, key, value = (jnp.where(inside, x, jnp.zeros((), x.dtype)) for x in (query, key, value))
    mask = cudnn.MaskType.PADDING_CAUSAL if causal else cudnn.MaskType.PADDING
    out = cudnn.dot_product_attention(query, key, value, None, None, lengths, lengths, offsets,
                                      offsets, scale=scale, mask_type=mask,
                                      sliding_window_length=sliding_window)
    return jnp.where(inside, out, jnp.zeros((), out.dtype))

  def by_pallas(query, key, value):
    from gen_jax import kernels
    return kernels.flash_attention(query, key, value, causal=causal, segment_ids=segment_ids,
                                   sliding_window=sliding_window, scale=scale, **pallas_target())

  return jax.lax.cond(counts.max() <= CUDNN_MAX_DOCUMENTS, by_cudnn, by_pallas, query, key, value)


_LOGICAL_AXES = {
    "query": ("batch", "length", "heads", "head_dim"),
    "key": ("batch", "length", "kv_heads", "head_dim"),
    "value": ("batch", "length", "kv_heads", "head_dim"),
    "segment_ids": ("batch", "length"),
    "key_segment_ids": ("batch", "length"),
    "query_offset": (),
}


def _sharded_attention(mesh, inputs, options, ring: bool, striped: bool):
  """`_local_attention` per shard; along a split length keys and values are all-gathered, or with
  `ring` and queries split like them, passed round by ring attention (`striped`: in stripe
  order)."""
  # The interpreter's end-of-kernel check (no barrier left allocated) scans every device's
  # barriers without waiting for the other devices' kernels to end: a race between the devices.
  if options["impl"] == "pallas_mosaic" and mesh.size > 1 and pallas_target()["interpret"]:
    raise ValueError(
        "impl 'pallas_mosaic' off a GPU runs JAX's Mosaic GPU interpreter, whose backward "
        "kernels fail under a mesh of more than one device (an interpreter's barrier found still "
        "allocated, or a hang; JAX 0.10 and 0.11): interpret it on one device "
        "(mesh.num_devices=1), or use 'pallas' (the Triton kernels, interpreted)")
  inputs = dict(inputs)
  static_offset = inputs.pop("query_offset")
  if not isinstance(static_offset, int):  # A traced offset enters shard_map as a replicated input.
    inputs["query_offset"], static_offset = jnp.asarray(static_offset, jnp.int32), 0
  specs = {name: parallel_context.logical_spec(_LOGICAL_AXES[name], x.shape, mesh)
           for name, x in inputs.items()}
  # The heads of a query shard must meet the kv heads of the same group: split both or neither.
  if parallel_context.spec_axes(specs["query"], 2) != parallel_context.spec_axes(specs["key"], 2):
    specs["query"] = P(*specs["query"][:2], None, None)
    specs["key"] = specs["value"] = P(*specs["key"][:2], None, None)
  query_length_axes = parallel_context.spec_axes(specs["query"], 1)
  key_length_axes = parallel_context.spec_axes(specs["key"], 1)
  if striped and query_length_axes != key_length_axes:
    raise ValueError(f"sequence_parallel 'striped_ring' needs queries and keys split alike, got "
                     f"{query_length_axes} and {key_length_axes}")
  ring = ring and key_length_axes and key_length_axes == query_length_axes
  if ring:
    from gen_jax.ops import ring_attention  # It builds on this module.
    ring_options = ring_attention.RingOptions(
        axes=key_length_axes, num_shards=math.prod(mesh.shape[a] for a in key_length_axes),
        causal=options["causal"], sliding_window=options["sliding_window"],
        scale=options["scale"], striped=striped, settings=tuple(options["settings"].items()),
        # Ring blocks sum float32 partial results: the Triton kernels' (Mosaic's write bf16).
        impl="pallas" if resolve_impl(options["impl"]) in FLASH_IMPLS else resolve_impl(
            options["impl"]))

  def per_shard(x):
    x = {"query_offset": static_offset, **x}
    if ring:
      return ring_attention.ring_attention(
          x["query"], x["key"], x["value"], ring_options, x.get("segment_ids"),
          x.get("key_segment_ids"), x["query_offset"])
    if key_length_axes:
      for name in ("key", "value", "key_segment_ids"):
        if name in x:
          x[name] = jax.lax.all_gather(x[name], key_length_axes, axis=1, tiled=True)
    if query_length_axes:  # This shard's queries start further along the sequence.
      x["query_offset"] = (x["query_offset"] +
                           jax.lax.axis_index(query_length_axes) * x["query"].shape[1])
    return _local_attention(**x, **options)

  # check_vma=False: the Pallas interpreter (kernels on CPU) cannot follow how values vary over the
  # mesh axes; the out_specs below say it (each shard's output is its own queries' rows).
  return jax.shard_map(per_shard, mesh=mesh, in_specs=(specs,), out_specs=specs["query"],
                       check_vma=False)(inputs)
