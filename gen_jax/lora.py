"""Low-rank adapters on the transformer's projections (Hu et al., 2021, "LoRA: Low-Rank Adaptation
of Large Language Models"); over int weights, QLoRA (Dettmers et al., 2023).

The adapter itself lives in `gen_jax.quant.projection.Projection` (lora_a [in, r], lora_b [r, out]
beside the kernel, output += (x A B) * alpha / r). The model config says which projections carry
one (`model.lora_rank`, `model.lora_alpha`, `model.lora_targets`); this module checks those fields,
splits a param tree into adapters and base, and folds trained adapters into the kernels:

  adapters = adapter_params(params)  # What fine-tuning updates; base_params(params) stays frozen.
  merged, merged_config = merge_adapters(params, config)  # A plain model again (lora_rank 0).
"""
from collections.abc import Mapping
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.config.errors import require
from gen_jax.partition import split_params

ATTENTION_TARGETS = ("query", "key", "value", "out")
MLP_TARGETS = ("wi_gate", "wi_up", "wo")
LORA_TARGETS = (*ATTENTION_TARGETS, *MLP_TARGETS, "lm_head")
ADAPTER_LEAVES = ("lora_a", "lora_b")


def parse_targets(text: str) -> tuple[str, ...]:
  """"query, value" -> ("query", "value"): the comma-separated projection names, blanks dropped
  (validated by check_lora, not here)."""
  return tuple(name.strip() for name in text.split(",") if name.strip())


def check_lora(model) -> None:
  """Checks model.lora_rank / lora_alpha / lora_targets of a transformer's model config (a
  ConfigDict or TransformerConfig); raises ConfigError naming the field."""
  rank, alpha, text = model.lora_rank, model.lora_alpha, model.lora_targets
  require(isinstance(rank, int) and rank >= 0, "model.lora_rank",
          f"must be an integer >= 0 (0: no adapters), got {rank!r}")
  require(isinstance(text, str), "model.lora_targets",
          f"must be a comma-separated string such as 'query,value', got {text!r}")
  if not rank:
    return
  require(alpha > 0, "model.lora_alpha", f"must be positive, got {alpha}")
  targets = parse_targets(text)
  require(bool(targets), "model.lora_targets",
          f"is empty; with model.lora_rank={rank} name some of {', '.join(LORA_TARGETS)}")
  for name in targets:
    require(name in LORA_TARGETS, "model.lora_targets",
            f"{name!r} is not a projection; allowed: {', '.join(LORA_TARGETS)}")
  repeated = sorted({name for name in targets if targets.count(name) > 1})
  require(not repeated, "model.lora_targets", f"{', '.join(repeated)} named more than once")
  on_mlp = [name for name in targets if name in MLP_TARGETS]
  require(not (model.num_experts and on_mlp), "model.lora_targets",
          f"{', '.join(on_mlp)}: adapters on a mixture of experts' MLPs are not supported "
          f"(model.num_experts={model.num_experts}); keep to attention targets and lm_head")
  require(not ("lm_head" in targets and model.tie_embeddings), "model.lora_targets",
          "lm_head: with model.tie_embeddings the output layer is the embedding table, not a "
          "projection; drop lm_head or set model.tie_embeddings=False")


def is_adapter(path: tuple) -> bool:
  """Whether a param path (a tuple of str keys, or of jax.tree_util DictKeys) ends at a LoRA leaf."""
  return bool(path) and getattr(path[-1], "key", path[-1]) in ADAPTER_LEAVES


def adapter_params(params: Mapping) -> dict:
  """The subtree of only the lora_a / lora_b leaves (same nesting, e.g. layers/attention/query);
  `gen_jax.partition.merge_params(base, adapters)` joins the two parts again."""
  return split_params(params, is_adapter)[0]


def base_params(params: Mapping) -> dict:
  """Everything but the adapters: the frozen part of LoRA fine-tuning."""
  return split_params(params, is_adapter)[1]


def merge_adapters(params: Mapping, model_config) -> tuple[dict, object]:
  """Folds every adapter into its kernel: kernel += reshape(A @ B * alpha / r) (per layer for the
  scanned [layers, ...] params), computed in float32 and cast back to the kernel's dtype.

  Args:
    params: the param tree of Transformer(model_config) (boxed or not).
    model_config: its TransformerConfig, with lora_rank > 0 and float kernels (weight_bits 0).
  Returns:
    (the params without lora leaves, model_config with lora_rank 0): the plain model on them
    computes what the adapted one does.
  Raises:
    ConfigError naming model.weight_bits (an int base has no float kernel to fold into: keep the
    adapters separate, or dequantize the base first) or model.lora_rank (0: nothing to merge);
    ValueError naming a param that is missing or of the wrong shape.
  """
  bits, rank = model_config.weight_bits, model_config.lora_rank
  require(not bits, "model.weight_bits",
          f"adapters over {bits}-bit weights cannot be merged (no float kernel to fold into); "
          "keep them separate, or merge into gen_jax.quant.dequantize_params' float tree")
  require(rank > 0, "model.lora_rank", "is 0: the model has no adapters to merge")
  scaling = model_config.lora_alpha / rank
  merged = []

  def walk(tree: Mapping, path: str) -> dict:
    if "lora_a" not in tree and "lora_b" not in tree:
      return {key: walk(value, f"{path}/{key}") if isinstance(value, Mapping) else value
              for key, value in tree.items()}
    for name in ("kernel", *ADAPTER_LEAVES):
      if name not in tree:
        raise ValueError(f"params: {path}/{name} is missing beside the adapter")
    kernel, a, b = tree["kernel"], tree["lora_a"], tree["lora_b"]  # a [*lead, in, r], b [.., r, out]
    delta = jnp.matmul(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                       precision=jax.lax.Precision.HIGHEST) * scaling  # [*lead, in, out]
    if delta.size != kernel.size or a.shape[:-2] != kernel.shape[:a.ndim - 2]:
      raise ValueError(f"params: {path}: lora_a {a.shape} @ lora_b {b.shape} does not fit the "
                       f"kernel {kernel.shape}")
    merged.append(path)
    # The kernel's contracted axes then its output axes, each flattened row-major, are exactly
    # the [in, out] the adapter sees, so a reshape lines the two up.
    kernel32 = jnp.asarray(kernel, jnp.float32) + delta.reshape(kernel.shape)
    rest = {key: value for key, value in tree.items() if key not in ("kernel", *ADAPTER_LEAVES)}
    return {**rest, "kernel": kernel32.astype(kernel.dtype)}

  out = walk(nn.meta.unbox(params), "params")
  found = sorted({path.rsplit("/", 1)[1] for path in merged})
  if found != sorted(parse_targets(model_config.lora_targets)):
    raise ValueError(f"params: adapters on {found or 'no projection'}, but model.lora_targets is "
                     f"{model_config.lora_targets!r}; pass the adapted model's params and config")
  return out, dataclasses.replace(model_config, lora_rank=0)


__all__ = ["ADAPTER_LEAVES", "LORA_TARGETS", "adapter_params", "base_params", "check_lora",
           "is_adapter", "merge_adapters", "parse_targets"]
