"""Post-training weight-only quantization of a transformer's param tree: round-to-nearest, GPTQ
(Frantar et al., 2023) with Hessians from calibration text, or AWQ (Lin et al., 2024): rounding
after activation-aware input scales chosen on calibration text (gen_jax.quant.awq).

`quantize_params` turns a float tree (trained, or imported through gen_jax.interop) into the tree of
the same `Transformer` with `weight_bits` set: each projection's {"kernel"} becomes
{"qweight", "scale"}. Which leaves are projections, and their layout, is read off the quantized
model's own abstract param tree (`jax.eval_shape` of its init), so any projection the model
declares is covered and nothing here lists layers by name. Kept in float: the token embedding (a
lookup, and with tied embeddings also the output layer), the norms, and an untied lm_head (GPTQ and
AWQ keep the output layer in full precision too). A mixture of experts' expert stacks [e, in, out]
are quantized per expert by round-to-nearest (GPTQ and AWQ calibrate projections' inputs, which the
experts do not record).
"""
from collections.abc import Mapping
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.quant import awq, formats
from gen_jax.quant.calibration import collect_input_grams
from gen_jax.quant.gptq import gptq_quantize

METHODS = ("rtn", "gptq", "awq")


def quantized_config(config, bits: int, group_size: int):
  """The TransformerConfig with `bits`-bit weights in groups of `group_size` (bits 0: float);
  raises ConfigError naming model.weight_bits / model.weight_group_size."""
  return dataclasses.replace(config, weight_bits=bits, weight_group_size=group_size)


def _param_shapes(config) -> dict:
  # gen_jax.models imports gen_jax.quant.projection, so the model is imported here, not at the top.
  from gen_jax.models.transformer import Transformer
  shapes = jax.eval_shape(
      lambda: Transformer(config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
  return nn.meta.unbox(shapes["params"])


def _check_shape(value, expected, path: str) -> None:
  if tuple(value.shape) != tuple(expected.shape):
    raise ValueError(f"params: {path} has shape {tuple(value.shape)}; the config expects "
                     f"{tuple(expected.shape)}")


WEIGHT_LEAVES = ("kernel", "qweight", "scale")  # A projection's weight, float or quantized.


def _map_projections(source: dict, target: dict, on_projection, path: str = "") -> dict:
  """Walks `target` (an abstract param tree), building each leaf from `source`: where exactly one
  of the two trees has a quantized projection ({"qweight", "scale"}), on_projection(path, source
  node, target node) builds the weight leaves; the projection's other leaves (LoRA adapters) and
  every other leaf are copied in the target's dtype."""
  out = {}
  for key, node in target.items():
    where = f"{path}/{key}" if path else key
    if key not in source:
      raise ValueError(f"params: {where} is missing")
    if isinstance(node, dict) != isinstance(source[key], Mapping):
      kinds = ("a subtree", "an array") if isinstance(node, dict) else ("an array", "a subtree")
      raise ValueError(f"params: {where} is {kinds[1]}; the config's param tree has {kinds[0]}")
    if isinstance(node, dict) and ("qweight" in node) != ("qweight" in source[key]):
      rest = {k: v for k, v in node.items() if k not in WEIGHT_LEAVES}
      out[key] = {**_map_projections(source[key], rest, on_projection, where),
                  **on_projection(where, source[key], node)}
    elif isinstance(node, dict):
      out[key] = _map_projections(source[key], node, on_projection, where)
    else:
      _check_shape(source[key], node, where)
      out[key] = jnp.asarray(source[key], node.dtype)
  return out


def quantize_params(params: dict, config, *, bits: int, group_size: int, method: str = "rtn",
                    calibration=None, damping: float = 0.01, act_order: bool = True,
                    batch_size: int = 8) -> dict:
  """The param tree of `quantized_config(config, bits, group_size)` from a float one.

  Args:
    params: the float model's param tree (boxed or not; numpy or jax arrays). LoRA adapters
      (config.lora_rank > 0) are carried over beside the quantized kernels (QLoRA; AWQ rescales
      them with their kernels, so the adapted model is unchanged).
    config: its TransformerConfig (weight_bits 0); param_dtype is the dtype scales are kept in.
    bits: 8 or 4.
    group_size: inputs per scale; divides every projection's input size.
    method: "rtn" (round to nearest), "gptq" or "awq".
    calibration: GPTQ and AWQ: [n, t] int token windows, the text the input statistics come from
      (keep it apart from any text the quantized model is evaluated on).
    damping: GPTQ's relative diagonal damping of the Hessian.
    act_order: GPTQ quantizes the inputs with the largest activations first (`gptq_quantize`);
      on SmolLM2-135M int4 it removed most of GPTQ's perplexity loss (benchmarks/quantization.py).
    batch_size: calibration windows per forward pass.
  Raises:
    ValueError (ConfigError for the format) naming the bad argument or param.
  """
  if method not in METHODS:
    raise ValueError(f"method: {method!r} is not one of {METHODS}")
  if bits not in formats.WEIGHT_BITS[1:]:
    raise ValueError(f"bits: {bits!r} is not one of {formats.WEIGHT_BITS[1:]}")
  if config.weight_bits:
    raise ValueError(f"config.weight_bits: the params to quantize are float ones (weight_bits 0), "
                     f"got {config.weight_bits}")
  if method != "rtn" and calibration is None:
    raise ValueError(f"calibration: {method} needs calibration tokens [n, t]")
  if method == "rtn" and calibration is not None:
    raise ValueError("calibration: round-to-nearest uses no calibration data; pass method='gptq'")
  if method != "rtn" and config.num_experts:
    raise ValueError(f"method: {method!r} calibrates on the projections' recorded inputs, which a "
                     f"mixture of experts' expert MLPs do not record (model.num_experts="
                     f"{config.num_experts}); use method='rtn'")
  target = _param_shapes(quantized_config(config, bits, group_size))
  params = nn.meta.unbox(params)
  grams = collect_input_grams(config, params, calibration, batch_size) if method != "rtn" else {}
  if method == "awq":  # Scale, then round to nearest.
    params, _ = awq.scale_params(params, grams, bits=bits, group_size=group_size)
  scale_dtype = jnp.dtype(config.param_dtype)

  def quantize(path, source, node):
    lead, out_size = node["qweight"].shape[:-3], node["qweight"].shape[-1]
    kernel = jnp.asarray(source["kernel"], jnp.float32)
    w = kernel.reshape(*lead, -1, out_size)  # [*lead, in, out]: contracted axes flattened.
    if method in ("rtn", "awq"):
      qweight, scale = formats.quantize(w, bits, group_size, scale_dtype)
    else:
      gram = _get(grams, path)["input_gram"]  # [*lead, in, in]
      gptq = jax.vmap(lambda w, gram: gptq_quantize(
          w, gram, bits=bits, group_size=group_size, damping=damping, scale_dtype=scale_dtype,
          act_order=act_order))
      qweight, scale = gptq(w.reshape(-1, *w.shape[-2:]), gram.reshape(-1, *gram.shape[-2:]))
      qweight, scale = qweight.reshape(node["qweight"].shape), scale.reshape(node["scale"].shape)
    _check_shape(qweight, node["qweight"], f"{path}/qweight")
    return {"qweight": qweight, "scale": scale}

  return _map_projections(params, target, quantize)


def _get(tree: dict, path: str):
  for key in path.split("/"):
    tree = tree[key]
  return tree


def dequantize_params(params: dict, config) -> dict:
  """The float param tree (of `quantized_config(config, 0, ...)`, in config.param_dtype) whose
  kernels are the dequantized weights of a quantized tree: the float model on them computes what
  the quantized model computes. LoRA adapters are carried over unchanged."""
  if not config.weight_bits:
    raise ValueError("config.weight_bits: 0; these params are not quantized")
  target = _param_shapes(quantized_config(config, 0, config.weight_group_size))

  def dequantize(path, source, node):
    w = formats.dequantize(source["qweight"], source["scale"], config.weight_bits,
                           jnp.dtype(config.param_dtype))
    return {"kernel": w.reshape(node["kernel"].shape)}

  return _map_projections(nn.meta.unbox(params), target, dequantize)
