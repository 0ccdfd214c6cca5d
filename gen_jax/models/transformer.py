"""Decoder-only transformer in the LLaMA family (Touvron et al., 2023).

Pre-norm blocks of RMSNorm -> grouped-query attention with RoPE -> residual, RMSNorm -> SwiGLU ->
residual; the layers are one `nn.scan` so compile time does not grow with depth (their params
stacked on a leading layer axis: the layout checkpoints, interop and quantization use), or with
`scan_layers=False` a Python loop of separately stored layers (`unstack_layers`). With
`num_experts > 0` the SwiGLU is a mixture of experts (`gen_jax.models.moe`, Mixtral-style), whose
routing statistics come back from the scan per layer when the caller asks for them. With
`weight_bits` set, every attention and MLP projection holds group-wise int8/int4 weights
(`gen_jax.quant`; the param tree from `gen_jax.quant.quantize_params`). With `lora_rank` set, the
projections named in `lora_targets` carry LoRA adapters (`gen_jax.lora`; over int weights, QLoRA).
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax import ops
from gen_jax.lora import check_lora, parse_targets
from gen_jax.models.layers import Attention, RMSNorm, SwiGLU, partitioned
from gen_jax.models.moe import MoeMlp
from gen_jax.quant.formats import check_weight_quantization
from gen_jax.quant.projection import STATS, Projection

# Rematerialization of each block in the backward pass: "none" keeps every activation; "full"
# recomputes the block; "dots" keeps the outputs of its weight matmuls. "attention" and
# "dots_attention" also keep the attention forward kernel's outputs (the Pallas flash kernel's
# attention output and log-sum-exp, [b, t, n, h] + [b, n, t] per layer; cuDNN's output and
# softmax statistics), which its backward kernels read, so the backward pass does not run the
# forward kernel again. (Not the Mosaic GPU forward of attention_impl="pallas_mosaic": JAX's
# partial evaluation of its primitive, mpmd_map, never saves outputs, so it reruns.)
REMAT_POLICIES = ("none", "full", "dots", "attention", "dots_attention")
# The name of the flash forward kernel, GPU (Triton, Mosaic GPU) and TPU (gen_jax.kernels), and
# the primitives of Pallas kernels: pallas_call, and mpmd_map for a Mosaic GPU kernel.
FLASH_FORWARD_KERNEL = "flash_attention_forward"
PALLAS_KERNEL_PRIMITIVES = ("pallas_call", "mpmd_map")
# The primitive of cuDNN's attention forward pass in JAX (jax.nn.dot_product_attention's cudnn
# implementation and its packed layout, ops.attention's "cudnn").
CUDNN_FORWARD_PRIMITIVE = "dot_product_attention_fwd_wrapper"


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyperparameters of the decoder; the fields of `config.model` for the llm family."""
  vocab_size: int
  embed_dim: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  max_seq_len: int
  rope_base: float = 10000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  dtype: str = "float32"  # Compute dtype of matmuls and activations.
  param_dtype: str = "float32"
  # ops.ATTENTION_IMPLS. "auto": XLA on a CPU; on a GPU cuDNN where it can compute the call and
  # the Pallas flash kernel otherwise (decoding over a cache: read whole, no XLA product that
  # XLA:GPU reduces unfused; docs/BENCHMARKS.md); Pallas on a TPU. Configs set their own. A flash
  # impl may carry kernel settings (ops.FLASH_SETTINGS: "pallas_mosaic:dq=atomic").
  attention_impl: str = "auto"
  sequence_parallel: str = "all_gather"  # ops.SEQUENCE_PARALLEL: with the length split.
  sliding_window: int = 0  # Each token attends to this many most recent tokens (Mistral); 0: all.
  remat: str = "none"  # Rematerialization of each block in the backward pass: REMAT_POLICIES.
  scan_unroll: int = 1  # Layers per iteration of the layer loop; num_layers unrolls it (see below).
  # False: no layer loop at all; each layer's params are their own arrays ("layers_0", ...; see
  # unstack_layers), so no step of single-token decoding slices the weight stacks (MaxText decodes
  # unscanned for the same reason). Compile time grows with depth. Not a training setting: the
  # stored layout is the stacked one.
  scan_layers: bool = True
  num_experts: int = 0  # Experts in each block's MLP; 0 is the dense SwiGLU.
  experts_per_token: int = 2  # Top-k routing (MoE only).
  expert_capacity_factor: float = 1.25  # Slots per expert, see moe.expert_capacity; 0: no drop.
  expert_group_size: int = 0  # Tokens per routing group (moe.MoeMlp.group_size); 0: a sequence.
  weight_bits: int = 0  # Attention/MLP weights: 0 float; 8 or 4 group-wise ints (gen_jax.quant).
  weight_group_size: int = 64  # Inputs sharing one scale (int weights only).
  weight_matmul_impl: str = "xla"  # Int weights' matmul: gen_jax.quant.matmul.WEIGHT_MATMUL_IMPLS.
  lora_rank: int = 0  # Rank of the LoRA adapters (gen_jax.lora); 0: none.
  lora_alpha: float = 16.0  # Adapter outputs are scaled by lora_alpha / lora_rank.
  lora_targets: str = "query,value"  # Comma-separated projections with adapters: lora.LORA_TARGETS.

  def __post_init__(self):
    check_weight_quantization(self)
    check_lora(self)

  @classmethod
  def from_config(cls, model_config) -> "TransformerConfig":
    return cls(**model_config.to_dict())


class _Block(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, carry, layer, positions, segment_ids, cache_index, cache_segment_ids):
    """carry: (x [b, t, d], a KV cache {"key", "value"}: the model's whole [layers, b, L, k, h]
    stacks, or this layer's own [b, L, k, h] buffers, or None); layer: this block's index in the
    stacks (traced under nn.scan), None with its own buffers. Returns (the carry with x and this
    layer's cache slots updated, router statistics {name: [b]} or None for a dense MLP: nn.scan's
    per-layer output)."""
    c = self.config
    x, cache = carry
    dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    lora = dict(lora_rank=c.lora_rank, lora_alpha=c.lora_alpha,
                lora_targets=parse_targets(c.lora_targets))
    h = RMSNorm(c.norm_eps, dtype, param_dtype, name="attention_norm")(x)
    attention = Attention(c.num_heads, c.num_kv_heads, c.head_dim, c.rope_base, c.attention_impl,
                          dtype, param_dtype, sequence_parallel=c.sequence_parallel,
                          sliding_window=c.sliding_window or None,
                          weight_bits=c.weight_bits, weight_group_size=c.weight_group_size,
                          weight_matmul_impl=c.weight_matmul_impl,
                          **lora, name="attention")
    if cache is None:
      x = x + attention(h, positions, segment_ids)
    else:
      out, cache = attention(h, positions, segment_ids, cache, cache_index, cache_segment_ids,
                             cache_layer=layer)
      x = x + out
    h = RMSNorm(c.norm_eps, dtype, param_dtype, name="mlp_norm")(x)
    if c.num_experts:
      valid = None if segment_ids is None else segment_ids != 0  # Padding is routed nowhere.
      out, router_stats = MoeMlp(c.num_experts, c.experts_per_token, c.mlp_dim,
                                 c.expert_capacity_factor, c.expert_group_size, dtype,
                                 param_dtype, c.weight_bits, c.weight_group_size,
                                 name="mlp")(h, valid)
    else:
      out = SwiGLU(c.mlp_dim, dtype, param_dtype, c.weight_bits, c.weight_group_size, **lora,
                   weight_matmul_impl=c.weight_matmul_impl,
                   name="mlp")(h)
      router_stats = None
    x = nn.with_logical_constraint(x + out, ("batch", "length", None))
    return (x, cache), router_stats


def _attention_forward_saveable(primitive, *_, **params) -> bool:
  return (primitive.name in PALLAS_KERNEL_PRIMITIVES
          and str(params.get("name")) == FLASH_FORWARD_KERNEL
          or primitive.name == CUDNN_FORWARD_PRIMITIVE)


def _remat(block_cls, policy: str):
  if policy == "none":
    return block_cls
  dots = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  checkpoint_policy = {
      "full": None, "dots": dots, "attention": _attention_forward_saveable,
      "dots_attention": jax.checkpoint_policies.save_from_both_policies(
          dots, _attention_forward_saveable)}
  return nn.remat(block_cls, policy=checkpoint_policy[policy], prevent_cse=False)


OUTPUTS = ("logits", "hidden")


class Transformer(nn.Module):
  """Decoder-only language model."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None, *, return_router_stats: bool = False,
               cache: dict | None = None, cache_index: jax.Array | int = 0,
               outputs: str = "logits"):
    """Next-token logits.

    Args:
      tokens: [b, t] int token ids.
      positions: [b, t] int positions for RoPE; default 0..t-1 (packed data restarts them per
        document).
      segment_ids: [b, t] int document ids; attention stays inside a document; 0 is padding.
      return_router_stats: also return the MoE routing statistics (for the auxiliary losses).
      cache: a KV cache from `init_kv_cache` for decoding: this call's tokens take cache slots
        cache_index .. cache_index + t - 1 and attend to every earlier slot of their segment.
        Requires segment_ids (the slots' segment ids are kept in the cache).
      cache_index: the first slot of this call (a traced scalar is fine).
      outputs: "logits"; "hidden": the final normed hidden states [b, t, d] in place of the
        logits, without the output layer (for a head of another kind: a reward model's, PPO's
        value head; `output_layer` makes the logits of them).
    Returns:
      logits [b, t, v] in float32; with return_router_stats, (logits, stats) where stats maps each
      name of moe.ROUTER_STATS to [layers, b] float32 (None for a dense model); with a cache,
      (logits, updated cache).
    """
    c = self.config
    dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    # Striped ring attention: the whole model runs on the sequence in stripe order (only attention
    # can tell) and the hidden states go back to position order before the output layer.
    stripes = 1
    if cache is None and c.sequence_parallel == "striped_ring":
      stripes = ops.sequence_shards(*tokens.shape)
      tokens, positions, segment_ids = (None if a is None else ops.to_stripes(a, stripes)
                                        for a in (tokens, positions, segment_ids))
    embed = _embedding(c, name="embed")
    x = embed(tokens)  # [b, t, d]
    x = nn.with_logical_constraint(x, ("batch", "length", None))
    layer_caches = cache_segment_ids = None
    if cache is not None:
      if segment_ids is None or return_router_stats:
        raise ValueError("decoding with a cache needs segment_ids and returns no router stats")
      cache_segment_ids = jax.lax.dynamic_update_slice(
          cache["segment_ids"], segment_ids.astype(jnp.int32), (0, cache_index))
      # The whole stack (or every layer's buffer) travels with the hidden states and each layer
      # updates its own slots in place: no step copies the cache, however long it is.
      layer_caches = {"key": cache["key"], "value": cache["value"]}
      if c.scan_layers and isinstance(cache["key"], (tuple, list)):
        raise ValueError("the layer loop (scan_layers) decodes with a stacked KV cache "
                         "([layers, b, L, k, h]); this one holds a buffer per layer: make it "
                         "with init_kv_cache of this model's config")
    block = _remat(_Block, c.remat)
    carry = (x, layer_caches)
    if c.scan_layers:
      blocks = nn.scan(
          # quant.STATS: per-layer calibration statistics, when the caller collects them.
          block, variable_axes={"params": 0, STATS: 0}, split_rngs={"params": True},
          in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
          length=c.num_layers,
          # A rolled loop takes each layer's weights out of the stacks by dynamic slices, which
          # XLA:GPU's default program copies before the GEMMs that read them (2.5x to 3x the bytes
          # of a decoding step, benchmarks/aot_hlo.py); the decoding loops' XLA options
          # (gen_jax.sampling.jit) have cuBLAS read them in place instead. Unrolled, the slices
          # are static (scan_layers=False has none); the params are the same either way.
          unroll=c.scan_unroll, metadata_params={nn.PARTITION_NAME: "layers"},
          # No variable is broadcast into the loop (every collection is stacked by
          # variable_axes), so flax's extra trace checking that broadcast ones stay constant has
          # nothing to check; and it refuses a body with side effects (the Mosaic GPU
          # interpreter's callbacks: attention_impl="pallas_mosaic" on a CPU), which dead-code
          # elimination keeps and so counts as a dependency on the loop.
          check_constancy_invariants=False)
      carry, router_stats = blocks(c, name="layers")(
          carry, jnp.arange(c.num_layers), positions, segment_ids, cache_index,
          cache_segment_ids)
    else:
      if not self.is_initializing() and self.has_variable("params", "layers"):
        raise ValueError("scan_layers=False takes each layer's params apart (layers_0, ...); "
                         "these are stacked: convert them with unstack_layers(params, "
                         "num_layers)")
      per_layer = []
      own_buffers = layer_caches is not None and isinstance(layer_caches["key"], (tuple, list))
      updated = {"key": [], "value": []}
      for i in range(c.num_layers):
        if own_buffers:  # Layer i reads and writes its own buffers; the rest stay put.
          (x, mine), stats = block(c, name=f"layers_{i}")(
              (carry[0], {name: layer_caches[name][i] for name in updated}), None, positions,
              segment_ids, cache_index, cache_segment_ids)
          carry = (x, layer_caches)
          for name in updated:
            updated[name].append(mine[name])
        else:
          carry, stats = block(c, name=f"layers_{i}")(
              carry, i, positions, segment_ids, cache_index, cache_segment_ids)
        per_layer.append(stats)
      if own_buffers:
        carry = (carry[0], {name: tuple(buffers) for name, buffers in updated.items()})
      router_stats = (None if per_layer[0] is None else
                      jax.tree.map(lambda *layers: jnp.stack(layers), *per_layer))
    x, layer_caches = carry
    if outputs not in OUTPUTS:
      raise ValueError(f"outputs={outputs!r} is not one of {OUTPUTS}")
    x = ops.from_stripes(x, stripes)
    x = RMSNorm(c.norm_eps, dtype, param_dtype, name="final_norm")(x)  # [b, t, d]
    if outputs == "hidden":
      logits = x  # What the output layer would read.
    elif c.tie_embeddings:
      logits = _tied_logits(embed, x)
    else:
      logits = _lm_head(c, name="lm_head")(x)
    logits = logits.astype(jnp.float32)
    if cache is not None:
      return logits, {**layer_caches, "segment_ids": cache_segment_ids}
    return (logits, router_stats) if return_router_stats else logits


def output_layer(config: TransformerConfig, params: dict, hidden: jax.Array) -> jax.Array:
  """The model's output layer alone: logits [..., v] float32 of final normed hidden states
  [..., d] (`Transformer(outputs="hidden")`) with the model's `params` (the lm_head, or the
  embedding when tied). hidden -> output_layer equals the Transformer's logits; a loss can then
  make the logits a slice of tokens at a time (objectives.chunked_next_token_loss)."""
  if config.tie_embeddings:
    logits = _tied_logits(_embedding(config).bind({"params": params["embed"]}), hidden)
  else:
    logits = _lm_head(config).apply({"params": params["lm_head"]}, hidden)
  return logits.astype(jnp.float32)


def _embedding(c: TransformerConfig, name: str | None = None) -> nn.Embed:
  return nn.Embed(c.vocab_size, c.embed_dim, dtype=jnp.dtype(c.dtype),
                  param_dtype=jnp.dtype(c.param_dtype),
                  embedding_init=partitioned(nn.initializers.normal(0.02), ("vocab", "embed")),
                  name=name)


def _tied_logits(embed: nn.Embed, x: jax.Array) -> jax.Array:
  # As one 2-D product, like Projection (XLA:CPU runs the 3-D form's gradient slower).
  return embed.attend(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], embed.num_embeddings)


def _lm_head(c: TransformerConfig, name: str | None = None) -> Projection:
  # Kept float when the blocks are quantized (as GPTQ and AWQ keep the output layer).
  lm_head_rank = c.lora_rank if "lm_head" in parse_targets(c.lora_targets) else 0
  return Projection((c.vocab_size,), ("embed", "vocab"), jnp.dtype(c.dtype),
                    jnp.dtype(c.param_dtype), lora_rank=lm_head_rank, lora_alpha=c.lora_alpha,
                    name=name)


def unstack_layers(params: dict, num_layers: int) -> dict:
  """Params of a `scan_layers=False` model from the stacked layout: params["layers"] (every leaf
  [layers, ...]) becomes params["layers_0"] .. params[f"layers_{num_layers - 1}"]; every param
  comes back a plain array (logical-axis boxes, whose names count the layer axis, are dropped).
  Copies the layer weights once (the stack can be freed after); stack_layers undoes it."""
  params = nn.meta.unbox(params)
  stacked = params["layers"]
  for leaf in jax.tree.leaves(stacked):
    if leaf.shape[:1] != (num_layers,):
      raise ValueError(f"params['layers'] holds a leaf of shape {leaf.shape}; a stack of "
                       f"num_layers={num_layers} layers leads with that axis")
  rest = {name: value for name, value in params.items() if name != "layers"}
  return {**rest, **{f"layers_{i}": jax.tree.map(lambda leaf, i=i: leaf[i], stacked)
                     for i in range(num_layers)}}


def stack_layers(params: dict, num_layers: int) -> dict:
  """The stacked layout (params["layers"], leaves [layers, ...]; plain arrays) of
  `unstack_layers`' output."""
  params = nn.meta.unbox(params)
  names = [f"layers_{i}" for i in range(num_layers)]
  missing = [name for name in names if name not in params]
  if missing:
    raise ValueError(f"params lack {missing[:3]}: not the params of {num_layers} separate layers")
  rest = {name: value for name, value in params.items() if name not in names}
  return {**rest, "layers": jax.tree.map(lambda *layers: jnp.stack(layers),
                                         *(params[name] for name in names))}


def init_kv_cache(config: TransformerConfig, batch_size: int, length: int) -> dict:
  """An empty KV cache of `length` slots: key/value in the compute dtype, one [layers, b, L, k, h]
  stack each for the layer loop (scan_layers), a tuple of per-layer [b, L, k, h] buffers for
  separate layers (each layer reads its own buffer whole: a stack would be sliced, and XLA:GPU
  copies each slice every step); segment_ids [b, L] int32 (0: an empty slot, which no query
  sees). A separate-layer model also takes the stacked form."""
  shape = (batch_size, length, config.num_kv_heads, config.head_dim)
  zeros = lambda: jnp.zeros(shape, jnp.dtype(config.dtype))
  if config.scan_layers:
    stack = lambda: jnp.zeros((config.num_layers, *shape), jnp.dtype(config.dtype))
    key, value = stack(), stack()
  else:
    key, value = (tuple(zeros() for _ in range(config.num_layers)) for _ in range(2))
  return {"key": key, "value": value, "segment_ids": jnp.zeros((batch_size, length), jnp.int32)}
