"""Load a llama.cpp GGUF file (LLaMA architecture) into gen_jax: config, float32 params, tokenizer.

Follows the GGUF spec (ggml's docs/gguf.md) and transformers' GGUF loader
(modeling_gguf_pytorch_utils.py): the file is read with the `gguf` package, quantized tensors
(Q4_1, Q8_0, ...) are dequantized to float32 with `gguf.quants`, and everything is translated into
the Hugging Face LLaMA layout first (config.json keys, tensor names), so that `hf_layout` alone maps
it onto gen_jax's parameters.

llama.cpp's converter permutes the rows of attn_q / attn_k, head by head, so that its interleaved
RoPE (pairs 2i, 2i+1) computes what Hugging Face's rotate-half RoPE (pairs i, i + head_dim/2) does
on the original rows; `_unpermute` undoes it, as transformers' LlamaTensorProcessor does.
"""
import re

import gguf
from gguf import quants
import numpy as np

from gen_jax.interop import hf_layout, pretrained_tokenizer

# GGUF tensor names -> Hugging Face names; "{layer}" is the block index.
_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{layer}.attn_norm.weight": "model.layers.{layer}.input_layernorm.weight",
    "blk.{layer}.attn_q.weight": "model.layers.{layer}.self_attn.q_proj.weight",
    "blk.{layer}.attn_k.weight": "model.layers.{layer}.self_attn.k_proj.weight",
    "blk.{layer}.attn_v.weight": "model.layers.{layer}.self_attn.v_proj.weight",
    "blk.{layer}.attn_output.weight": "model.layers.{layer}.self_attn.o_proj.weight",
    "blk.{layer}.ffn_norm.weight": "model.layers.{layer}.post_attention_layernorm.weight",
    "blk.{layer}.ffn_gate.weight": "model.layers.{layer}.mlp.gate_proj.weight",
    "blk.{layer}.ffn_up.weight": "model.layers.{layer}.mlp.up_proj.weight",
    "blk.{layer}.ffn_down.weight": "model.layers.{layer}.mlp.down_proj.weight",
}
_BLOCK = re.compile(r"^blk\.(\d+)\.(.*)$")
# llama.* metadata -> config.json keys (the optional ones get transformers' LlamaConfig defaults).
_CONFIG_KEYS = {
    "block_count": "num_hidden_layers",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "context_length": "max_position_embeddings",
}
_REQUIRED_KEYS = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count")


def _unpermute(weight: np.ndarray, num_heads: int) -> np.ndarray:
  """[num_heads * head_dim, d] rows in llama.cpp's rotary order -> Hugging Face's order.

  llama.cpp wrote reshape(n, 2, head_dim/2, d).swapaxes(1, 2); this reads them back as
  reshape(n, head_dim/2, 2, d) and swaps again.
  """
  head_dim = weight.shape[0] // num_heads
  return (weight.reshape(num_heads, head_dim // 2, 2, *weight.shape[1:]).swapaxes(1, 2)
          .reshape(weight.shape))


def _metadata(reader) -> dict:
  return {name: field.contents() for name, field in reader.fields.items()
          if not name.startswith("GGUF.")}


def hf_config_from_metadata(metadata: dict, has_output: bool, source: str = "GGUF") -> dict:
  """A Hugging Face LLaMA config.json dict from the file's llama.* metadata.

  Args:
    has_output: whether the file holds output.weight (without it the embeddings are tied).
  """
  arch = metadata.get("general.architecture")
  if arch != "llama":
    raise ValueError(f"{source}: general.architecture: {arch!r} is not supported (only 'llama')")
  if metadata.get("llama.expert_count", 0):
    raise ValueError(f"{source}: llama.expert_count: {metadata['llama.expert_count']}: mixtures "
                     "of experts are not supported")
  scaling = metadata.get("llama.rope.scaling.type", "none")
  if scaling != "none":
    raise ValueError(f"{source}: llama.rope.scaling.type: {scaling!r} is not supported (only the "
                     "plain rotary embedding)")
  for key in _REQUIRED_KEYS:
    if f"llama.{key}" not in metadata:
      raise ValueError(f"{source}: llama.{key}: missing")
  hf = {"model_type": "llama", "tie_word_embeddings": not has_output,
        "vocab_size": len(metadata["tokenizer.ggml.tokens"])}
  for key, hf_key in _CONFIG_KEYS.items():
    if f"llama.{key}" in metadata:
      hf[hf_key] = metadata[f"llama.{key}"]
  head_dim = hf.get("head_dim", hf["hidden_size"] // hf["num_attention_heads"])
  rotary = metadata.get("llama.rope.dimension_count", head_dim)
  if rotary != head_dim:
    raise ValueError(f"{source}: llama.rope.dimension_count: {rotary}: partial rotary embeddings "
                     f"are not supported (head_dim is {head_dim})")
  return hf


def _hf_name(name: str, source: str) -> str:
  block = _BLOCK.match(name)
  key = f"blk.{{layer}}.{block.group(2)}" if block else name
  if key not in _TENSOR_NAMES:
    raise ValueError(f"{source}: tensor {name!r} is not part of a supported LLaMA model")
  return _TENSOR_NAMES[key].format(layer=block.group(1) if block else "")


def load_gguf(path: str, reader=None) -> hf_layout.Pretrained:
  """(config, float32 numpy params, tokenizer) from a GGUF file; ValueError names what is not
  supported (the metadata key or tensor).

  Args:
    reader: the file opened already as a `gguf.GGUFReader` (parsing its metadata takes seconds).
  """
  reader = reader or gguf.GGUFReader(path)
  metadata = _metadata(reader)
  names = {t.name for t in reader.tensors}
  config = hf_layout.config_from_hf(
      hf_config_from_metadata(metadata, "output.weight" in names, path), source=path)
  heads = {"attn_q": config.num_heads, "attn_k": config.num_kv_heads}
  tensors = {}
  for tensor in reader.tensors:
    # GGUF lists shapes fastest axis first; dequantize gives the row-major [out, in] array.
    try:
      weight = quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
    except NotImplementedError as e:
      raise ValueError(f"{path}: tensor {tensor.name!r}: {e}") from e
    weight = weight.reshape(tuple(int(n) for n in reversed(tensor.shape)))
    kind = tensor.name.split(".")[-2]
    if kind in heads:
      weight = _unpermute(weight, heads[kind])
    tensors[_hf_name(tensor.name, path)] = weight
  params = hf_layout.params_from_hf(config, tensors, source=path)
  return hf_layout.Pretrained(config, params,
                              pretrained_tokenizer.from_gguf_metadata(metadata, path))
