"""The bytes one decoding step must read: the denominator of the bandwidth roofline that
benchmarks/decode.py (measured time) and benchmarks/aot_hlo.py (XLA's program) report against.

Every weight the step multiplies by, once: all parameters but the input embedding, of which a step
reads one row per sequence (unless it is tied to the output layer, which reads all of it); of a
mixture of experts' expert stacks only the experts `rows` tokens can choose, at most
rows * experts_per_token of num_experts (`gen_jax.models.moe`: fewer choices than experts go
through their own experts); and the KV cache, keys and values of every layer over `slots`
positions per row.
"""
import math

import jax
import jax.numpy as jnp

_EXPERT_STACKS = ("wi_gate", "wi_up", "wo")


def _is_expert_stack(path) -> bool:
  keys = [getattr(k, "key", k) for k in path]
  return any(k in _EXPERT_STACKS for k in keys) and any(str(k).startswith("mlp") for k in keys)


def must_read(config, params, rows: int, slots: int) -> int:
  """Bytes a step of `rows` sequences over `slots` cache positions must read.

  Args:
    config: the TransformerConfig decoded.
    params: its param tree (arrays or ShapeDtypeStructs; int weights count their codes and
      scales).
    rows: sequences decoded at once (the batch).
    slots: KV cache positions per sequence (prompt + new tokens).
  """
  expert_share = (min(1.0, rows * config.experts_per_token / config.num_experts)
                  if config.num_experts else 1.0)
  total = 0.0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    size = math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize
    total += size * (expert_share if config.num_experts and _is_expert_stack(path) else 1.0)
  if not config.tie_embeddings:  # The input embedding: a row per sequence, not the table.
    total -= config.vocab_size * config.embed_dim * jnp.dtype(config.param_dtype).itemsize
  cache = (2 * config.num_layers * rows * slots * config.num_kv_heads * config.head_dim
           * jnp.dtype(config.dtype).itemsize)
  return int(total + cache)
