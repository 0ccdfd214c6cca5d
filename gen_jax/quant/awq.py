"""Activation-aware weight scaling before quantization: AWQ (Lin et al., 2024, "AWQ: Activation-aware
Weight Quantization for LLM Compression and Acceleration").

Input channels that see large activations matter most, so AWQ multiplies a projection's input rows
by s > 0 (s = a^alpha, a the channel's activation magnitude) before rounding, and divides the
input by s where that costs nothing: in the preceding op. Per group of projections that share an
input, alpha is chosen from a grid to minimise the quantized outputs' error on calibration text.

With the Gram matrix G = X^T X of the inputs (gen_jax.quant.calibration), that error needs no
forward passes: for W' = dequant(quant(W diag(s))) diag(s)^-1, sum ||X W' - X W||^2 =
tr((W' - W)^T G (W' - W)), and a = sqrt(diag(G) / tokens) is the channel's RMS (the paper uses
the mean absolute value; the RMS is what the Gram keeps). alpha = 0 is plain rounding, so on the
calibration text AWQ is never worse than it.

Where the 1/s goes, in gen_jax's transformer block:
  attention_norm/scale -> attention/{query, key, value}  (the norm's output is their input)
  mlp_norm/scale       -> mlp/{wi_gate, wi_up}
  mlp/wi_up columns    -> mlp/wo  (wo's input is silu(gate) * up, linear in up's output)
The attention output projection keeps s = 1: its input is a softmax-weighted sum of values, but
with grouped-query attention one value channel feeds several heads' inputs, which would have to
share one scale (the paper's code likewise skips it when the shapes differ). LoRA adapters on a
scaled projection get the same row scaling (x/s @ s A = x A), so the adapted model is unchanged.
"""
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from gen_jax.quant import formats

# (the node 1/s is folded into, its leaves whose last axis is that input's channels, the
#  projections that read the input).
FOLDS = (
    (("layers", "attention_norm"), ("scale",),
     (("layers", "attention", "query"), ("layers", "attention", "key"),
      ("layers", "attention", "value"))),
    (("layers", "mlp_norm"), ("scale",), (("layers", "mlp", "wi_gate"), ("layers", "mlp", "wi_up"))),
    (("layers", "mlp", "wi_up"), ("kernel", "lora_b"), (("layers", "mlp", "wo"),)),
)
SCALED_LEAVES = ("kernel", "lora_a")  # Leaves whose input rows are multiplied by s.


def _rounding_error(w: jax.Array, gram: jax.Array, s: jax.Array, bits: int, group_size: int):
  """tr(D^T G D) for D = dequant(quant(w * s)) / s - w; w [in, out], gram [in, in], s [in]."""
  q, scale = formats.quantize(w * s[:, None], bits, group_size, jnp.float32)
  d = formats.dequantize(q, scale, bits, jnp.float32) / s[:, None] - w
  return jnp.sum(d * (gram @ d))


def search_scale(ws: list[jax.Array], gram: jax.Array, *, bits: int, group_size: int,
                 grid: int = 20) -> tuple[jax.Array, jax.Array]:
  """(s [in], alpha): the per-input-channel scale of the projections `ws` (each [in, out], one
  input) whose summed output error under `gram` [in, in] is least, over alpha in
  {0, 1/grid, ..., (grid-1)/grid} (alpha 0: s = 1, plain rounding)."""
  gram = gram.astype(jnp.float32)
  ws = [w.astype(jnp.float32) for w in ws]
  activation = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0)) + 1e-8  # Proportional to the RMS.

  def error(alpha):
    s = activation ** alpha
    s = s / jnp.sqrt(s.max() * s.min())  # Centred in log space, as the paper does.
    return sum(_rounding_error(w, gram, s, bits, group_size) for w in ws), s

  alphas = jnp.arange(grid, dtype=jnp.float32) / grid
  errors, scales = jax.lax.map(error, alphas)
  best = jnp.argmin(errors)
  return scales[best], alphas[best]


def _get(tree: dict, path: tuple):
  for key in path:
    tree = tree[key]
  return tree


def _scale_rows(node: dict, s: jax.Array, lead: int) -> dict:
  """A projection node with its kernel's (and lora_a's) input rows multiplied by s [*lead, in]."""
  out = dict(node)
  for name in SCALED_LEAVES:
    if name in node:
      leaf = jnp.asarray(node[name], jnp.float32)
      rows = leaf.reshape(*leaf.shape[:lead], s.shape[-1], -1) * s[..., None]
      out[name] = rows.reshape(leaf.shape).astype(leaf.dtype)
  return out


def _set(tree: dict, path: tuple, value) -> dict:
  if len(path) == 1:
    return {**tree, path[0]: value}
  return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


def scale_params(params: dict, grams: dict, *, bits: int, group_size: int,
                 grid: int = 20) -> tuple[dict, dict]:
  """(params with AWQ's scales applied, {projection path: alpha per layer}): the float model on
  the returned params computes what it did (up to float rounding); rounding them to `bits` in
  groups of `group_size` (round to nearest) is AWQ.

  Args:
    params: the float transformer's param tree (unboxed), layers stacked on a leading axis.
    grams: collect_input_grams' tree for those params.
  """
  search = jax.jit(jax.vmap(lambda ws, gram: search_scale(ws, gram, bits=bits,
                                                         group_size=group_size, grid=grid)))
  alphas = {}
  for fold_path, fold_leaves, projections in FOLDS:
    if not all(_has(params, p) for p in (fold_path, *projections)):
      continue  # A mixture-of-experts MLP, for one, has no wi_up / wo to fold into.
    gram = _get(grams, projections[0])["input_gram"]  # [layers, in, in]: the shared input's.
    num_layers, in_size = gram.shape[0], gram.shape[-1]
    ws = [jnp.asarray(_get(params, p)["kernel"]).reshape(num_layers, in_size, -1)
          for p in projections]
    s, alpha = search(ws, gram)  # [layers, in], [layers]
    for path in projections:
      params = _set(params, path, _scale_rows(_get(params, path), s, lead=1))
    node = dict(_get(params, fold_path))
    for name in fold_leaves:
      if name in node:
        leaf = jnp.asarray(node[name], jnp.float32)  # [layers, ..., in]
        node[name] = (leaf / s.reshape(num_layers, *([1] * (leaf.ndim - 2)), in_size)
                      ).astype(node[name].dtype)
    params = _set(params, fold_path, node)
    alphas.update({"/".join(p): alpha for p in projections})
  return params, alphas


def _has(tree: dict, path: tuple) -> bool:
  for key in path:
    if not isinstance(tree, Mapping) or key not in tree:
      return False
    tree = tree[key]
  return True
