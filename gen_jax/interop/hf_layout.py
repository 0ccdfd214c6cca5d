"""The Hugging Face LLaMA layout (transformers' LlamaForCausalLM / MistralForCausalLM /
MixtralForCausalLM) <-> gen_jax.

One table (`_TENSORS`) names each Hugging Face tensor and the gen_jax parameter it is; loading
(safetensors, GGUF) and export both read it, so the two directions cannot drift apart. The same goes
for config.json: `config_from_hf` and `hf_config` read one field table (`_CONFIG_FIELDS`).

Hugging Face stores a linear layer as weight [out, in] (y = x W^T); gen_jax's kernels are einsum
operands whose leading axes are the input: query [d, n, h], out [n, h, d], wi_gate [d, f], ...; the
layers are stacked on a leading axis [num_layers, ...] (nn.scan). Both use rotate-half RoPE, so the
query/key rows need no permutation here.

Supported: model_type llama, mistral or mixtral with SiLU SwiGLU, no biases, plain RoPE (no
rope_scaling), grouped-query attention, tied or untied embeddings, Mistral's sliding window.
Anything else is refused naming the config.json field.

Mixtral (Jiang et al., 2024) is gen_jax's mixture of experts (models.moe): a router [e, d] and
per expert w1 (gate), w3 (up), w2 (down), top-k gates softmaxed over the chosen logits. Mixtral
computes every token's choices, so a loaded config has expert_capacity_factor 0 (no drop); a model
trained with a capacity exports the same weights, and transformers then computes the choices its
capacity would have dropped. router_jitter_noise (transformers' training-time noise on the router
input) has no gen_jax counterpart: a nonzero value is refused; router_aux_loss_coef is a training
weight (gen_jax's objective.router_aux_loss_weight), not part of the model, and is not read.
"""
import dataclasses
import math
from typing import Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.data.tokenizer import Tokenizer
from gen_jax.models.transformer import Transformer, TransformerConfig

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "mixtral")
# Buffers some older checkpoints saved beside the weights; recomputed from the config, so unused.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class Pretrained(NamedTuple):
  """A loaded model: its config, parameters (the Transformer's param tree of numpy float32 arrays)
  and tokenizer (None when the checkpoint has none)."""
  config: TransformerConfig
  params: dict
  tokenizer: Tokenizer | None


@dataclasses.dataclass(frozen=True)
class _Tensor:
  hf_name: str  # "{layer}" stands for the layer index in per-layer tensors.
  path: tuple[str, ...]  # Into the gen_jax param tree; under "layers" it is stacked on axis 0.
  # None: the same array in both layouts (embedding, norm scales). k: a linear layer whose gen_jax
  # kernel has k leading input axes; Hugging Face's weight is that kernel flattened to
  # [prod(input axes), prod(output axes)] and transposed.
  input_axes: int | None
  # hf_name has "{expert}": one tensor per expert, stacked on the axis after the layers' in gen_jax.
  per_expert: bool = False


_TENSORS = (
    _Tensor("model.embed_tokens.weight", ("embed", "embedding"), None),
    _Tensor("model.norm.weight", ("final_norm", "scale"), None),
    _Tensor("lm_head.weight", ("lm_head", "kernel"), 1),
    _Tensor("model.layers.{layer}.input_layernorm.weight", ("layers", "attention_norm", "scale"),
            None),
    _Tensor("model.layers.{layer}.self_attn.q_proj.weight",
            ("layers", "attention", "query", "kernel"), 1),
    _Tensor("model.layers.{layer}.self_attn.k_proj.weight",
            ("layers", "attention", "key", "kernel"), 1),
    _Tensor("model.layers.{layer}.self_attn.v_proj.weight",
            ("layers", "attention", "value", "kernel"), 1),
    _Tensor("model.layers.{layer}.self_attn.o_proj.weight",
            ("layers", "attention", "out", "kernel"), 2),
    _Tensor("model.layers.{layer}.post_attention_layernorm.weight",
            ("layers", "mlp_norm", "scale"), None),
)
_DENSE_MLP = (
    _Tensor("model.layers.{layer}.mlp.gate_proj.weight", ("layers", "mlp", "wi_gate", "kernel"), 1),
    _Tensor("model.layers.{layer}.mlp.up_proj.weight", ("layers", "mlp", "wi_up", "kernel"), 1),
    _Tensor("model.layers.{layer}.mlp.down_proj.weight", ("layers", "mlp", "wo", "kernel"), 1),
)
_MOE = "model.layers.{layer}.block_sparse_moe."  # Mixtral's names, as its checkpoints have them.
_EXPERTS_MLP = (
    _Tensor(_MOE + "gate.weight", ("layers", "mlp", "router", "kernel"), 1),
    _Tensor(_MOE + "experts.{expert}.w1.weight", ("layers", "mlp", "wi_gate", "kernel"), 1, True),
    _Tensor(_MOE + "experts.{expert}.w3.weight", ("layers", "mlp", "wi_up", "kernel"), 1, True),
    _Tensor(_MOE + "experts.{expert}.w2.weight", ("layers", "mlp", "wo", "kernel"), 1, True),
)

# (config.json key, TransformerConfig field). head_dim, rope and the window are handled beside it.
_CONFIG_FIELDS = (
    ("vocab_size", "vocab_size"),
    ("hidden_size", "embed_dim"),
    ("num_hidden_layers", "num_layers"),
    ("num_attention_heads", "num_heads"),
    ("num_key_value_heads", "num_kv_heads"),
    ("intermediate_size", "mlp_dim"),
    ("max_position_embeddings", "max_seq_len"),
    ("rms_norm_eps", "norm_eps"),
    ("tie_word_embeddings", "tie_embeddings"),
)
# What transformers' LlamaConfig / MistralConfig assume for a key config.json leaves out.
_HF_DEFAULTS = {
    "llama": {"max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
              "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
              "rope_theta": 10000.0, "sliding_window": None},
    "mistral": {"max_position_embeddings": 4096 * 32, "rms_norm_eps": 1e-6,
                "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False,
                "mlp_bias": False, "rope_theta": 10000.0, "sliding_window": 4096},
    "mixtral": {"max_position_embeddings": 4096 * 32, "rms_norm_eps": 1e-5,
                "tie_word_embeddings": False, "hidden_act": "silu", "rope_theta": 1e6,
                "sliding_window": None, "num_local_experts": 8, "num_experts_per_tok": 2,
                "router_jitter_noise": 0.0},
}
# TransformerConfig features the LLaMA layout cannot hold (getattr: a field may not exist yet).
_NOT_EXPORTABLE = {"weight_bits": "int-quantized weights",
                   "lora_rank": "unmerged LoRA adapters (gen_jax.lora.merge_adapters folds them in)"}
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size")


def _rope_theta(hf: dict, defaults: dict, source: str) -> float:
  """transformers 5 writes rope_parameters {rope_type, rope_theta}; 4.x wrote rope_theta and
  rope_scaling. Only the default (unscaled) rotary embedding is supported."""
  rope = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling")
  rope_type = rope.get("rope_type", "default")
  if scaling or rope_type != "default":
    field = "rope_scaling" if scaling else "rope_parameters.rope_type"
    raise ValueError(f"{source}: {field}: {scaling or rope_type!r} is not supported (only the "
                     "plain rotary embedding, rope_type 'default')")
  return float(rope.get("rope_theta", hf.get("rope_theta", defaults["rope_theta"])))


def config_from_hf(hf: dict, source: str = "config.json") -> TransformerConfig:
  """TransformerConfig from a Hugging Face config.json dict; ValueError names an unsupported or
  missing field (prefixed by `source`)."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"{source}: model_type: {model_type!r} is not supported; supported: "
                     f"{SUPPORTED_MODEL_TYPES}")
  defaults = _HF_DEFAULTS[model_type]
  missing = [key for key in _REQUIRED if key not in hf]
  if missing:
    raise ValueError(f"{source}: {missing[0]}: missing")
  value = lambda key: hf[key] if key in hf else defaults.get(key)  # noqa: E731
  act = value("hidden_act")
  if act != "silu":
    raise ValueError(f"{source}: hidden_act: {act!r} is not supported (only 'silu', SwiGLU)")
  for key in ("attention_bias", "mlp_bias"):
    if value(key):
      raise ValueError(f"{source}: {key}: true is not supported (gen_jax's layers have no biases)")
  fields = {ours: value(key) for key, ours in _CONFIG_FIELDS}
  if fields["num_kv_heads"] is None:  # transformers: no key means multi-head attention.
    fields["num_kv_heads"] = fields["num_heads"]
  if model_type == "mixtral":
    if value("router_jitter_noise"):
      raise ValueError(f"{source}: router_jitter_noise: {value('router_jitter_noise')} is not "
                       "supported (gen_jax's router has no input noise; set it to 0)")
    fields.update(num_experts=value("num_local_experts"),
                  experts_per_token=value("num_experts_per_tok"), expert_capacity_factor=0.0)
  window = value("sliding_window") if model_type in ("mistral", "mixtral") else None
  return TransformerConfig(
      **fields, head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
      rope_base=_rope_theta(hf, defaults, source), sliding_window=window or 0)


def hf_config(config: TransformerConfig, tokenizer: Tokenizer | None = None) -> dict:
  """config.json for `config`: LlamaForCausalLM; MistralForCausalLM with a sliding window;
  MixtralForCausalLM with experts (see the module docstring on capacity)."""
  for field, what in _NOT_EXPORTABLE.items():
    if getattr(config, field, 0):
      raise ValueError(f"model.{field}: {getattr(config, field)}: {what} has no LLaMA layout to "
                       "export to")
  model_type = ("mixtral" if config.num_experts else "mistral" if config.sliding_window
                else "llama")
  hf = {"architectures": [model_type.capitalize() + "ForCausalLM"],
        "model_type": model_type, "hidden_act": "silu", "attention_bias": False,
        "head_dim": config.head_dim, "rope_theta": config.rope_base, "rope_scaling": None,
        "dtype": "float32"}
  hf.update({key: getattr(config, ours) for key, ours in _CONFIG_FIELDS})
  if model_type == "llama":
    hf["mlp_bias"] = False
  else:
    hf["sliding_window"] = config.sliding_window or None
  if model_type == "mixtral":
    hf.update(num_local_experts=config.num_experts, num_experts_per_tok=config.experts_per_token,
              router_jitter_noise=0.0)
  if tokenizer is not None:
    hf.update(eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id,
              bos_token_id=tokenizer.bos_id)
  return hf


def _param_shapes(config: TransformerConfig) -> dict:
  """The Transformer's param tree as ShapeDtypeStructs (traced, nothing allocated)."""
  net = Transformer(config)
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
  return nn.meta.unbox(shapes["params"])


def _entries(config: TransformerConfig):
  entries = _TENSORS + (_EXPERTS_MLP if config.num_experts else _DENSE_MLP)
  return [t for t in entries if not (config.tie_embeddings and t.path[0] == "lm_head")]


def _names(config: TransformerConfig, entry: _Tensor) -> np.ndarray:
  """The Hugging Face names of `entry`'s tensors, shaped as the leading axes they are stacked on in
  gen_jax: [] (one tensor), [layers] or [layers, experts]."""
  if entry.path[0] != "layers":
    return np.array(entry.hf_name)
  if not entry.per_expert:
    return np.array([entry.hf_name.format(layer=i) for i in range(config.num_layers)])
  return np.array([[entry.hf_name.format(layer=i, expert=j) for j in range(config.num_experts)]
                   for i in range(config.num_layers)])


def _get(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _hf_shape(entry: _Tensor, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The Hugging Face shape of one layer's gen_jax array of `shape` ([out, in] for a linear)."""
  if entry.input_axes is None:
    return tuple(shape)
  return math.prod(shape[entry.input_axes:]), math.prod(shape[:entry.input_axes])


def _to_ours(weight: np.ndarray, entry: _Tensor, shape: tuple[int, ...]) -> np.ndarray:
  """One layer's Hugging Face array -> the gen_jax array of `shape` (without the layer axis)."""
  if entry.input_axes is None:
    return weight.reshape(shape)
  return weight.T.reshape(shape)


def _to_hf(kernel: np.ndarray, entry: _Tensor) -> np.ndarray:
  if entry.input_axes is None:
    return kernel
  return kernel.reshape(math.prod(kernel.shape[:entry.input_axes]), -1).T


def params_from_hf(config: TransformerConfig, tensors: Mapping[str, np.ndarray],
                   source: str = "checkpoint") -> dict:
  """The gen_jax param tree (float32 numpy) from Hugging Face-named tensors; ValueError names a
  missing, unexpected or misshapen tensor."""
  shapes = _param_shapes(config)
  params, used = {}, set()
  for entry in _entries(config):
    names = _names(config, entry)
    one_shape = _get(shapes, entry.path).shape[names.ndim:]
    arrays = []
    for name in map(str, names.reshape(-1)):
      if name not in tensors:
        raise ValueError(f"{source}: tensor {name!r} is missing")
      weight = np.asarray(tensors[name], np.float32)
      if weight.shape != _hf_shape(entry, one_shape):
        raise ValueError(f"{source}: tensor {name!r} has shape {weight.shape}; the config "
                         f"expects {_hf_shape(entry, one_shape)}")
      arrays.append(_to_ours(weight, entry, one_shape))
      used.add(name)
    _set(params, entry.path, np.stack(arrays).reshape(names.shape + one_shape))
  unused = sorted(n for n in tensors if n not in used and not n.endswith(_IGNORED_SUFFIXES))
  if unused:
    raise ValueError(f"{source}: tensor {unused[0]!r} is not part of a supported LLaMA model "
                     f"({len(unused)} such tensors)")
  # The table must cover the model: a parameter added to Transformer needs a row in _TENSORS.
  assert jax.tree.structure(params) == jax.tree.structure(shapes), "_TENSORS is out of date"
  return params


def params_to_hf(config: TransformerConfig, params: dict) -> dict[str, np.ndarray]:
  """Hugging Face-named float32 tensors from a gen_jax param tree (boxed or not)."""
  params = nn.meta.unbox(params)
  tensors = {}
  for entry in _entries(config):
    value = np.asarray(jax.device_get(_get(params, entry.path)), np.float32)
    names = _names(config, entry)
    for index in np.ndindex(names.shape):
      tensors[str(names[index])] = np.ascontiguousarray(_to_hf(value[index], entry))
  return tensors
