"""Hugging Face checkpoint directories: load config.json + *.safetensors, export gen_jax models.

Follows transformers' on-disk format: config.json, model.safetensors or shards listed in
model.safetensors.index.json ({"weight_map": {tensor name: shard file}}), tokenizer.json and
tokenizer_config.json. An exported directory loads with
`transformers.AutoModelForCausalLM.from_pretrained(directory)` (LlamaForCausalLM,
MistralForCausalLM or, for a mixture of experts, MixtralForCausalLM) and AutoTokenizer.
"""
import json
import os

import ml_dtypes  # noqa: F401  Registers numpy's bfloat16, which bf16 checkpoints are stored in.
import numpy as np
from safetensors import numpy as safetensors_np

from gen_jax.data.tokenizer import Tokenizer
from gen_jax.interop import hf_layout, pretrained_tokenizer
from gen_jax.models.transformer import TransformerConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def read_tensors(directory: str) -> dict[str, np.ndarray]:
  """{name: array} from model.safetensors or every shard the index lists."""
  index_path = os.path.join(directory, WEIGHTS_INDEX_FILE)
  if os.path.exists(index_path):
    shards = sorted(set(_read_json(index_path)["weight_map"].values()))
  elif os.path.exists(os.path.join(directory, WEIGHTS_FILE)):
    shards = [WEIGHTS_FILE]
  else:
    raise ValueError(f"{directory}: has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE} "
                     "(PyTorch .bin checkpoints are not read; save with safetensors)")
  tensors = {}
  for shard in shards:
    tensors.update(safetensors_np.load_file(os.path.join(directory, shard)))
  return tensors


def load_hf(directory: str) -> hf_layout.Pretrained:
  """(config, float32 numpy params, tokenizer or None) from a Hugging Face LLaMA-family directory;
  ValueError names the unsupported config field or the bad tensor."""
  config_path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(config_path):
    raise ValueError(f"{directory}: has no {CONFIG_FILE}: not a Hugging Face model directory")
  hf_config = _read_json(config_path)
  config = hf_layout.config_from_hf(hf_config, source=config_path)
  params = hf_layout.params_from_hf(config, read_tensors(directory), source=directory)
  return hf_layout.Pretrained(config, params,
                              pretrained_tokenizer.from_hf_files(directory, hf_config))


def export_hf(directory: str, config: TransformerConfig, params: dict,
              tokenizer: Tokenizer | None = None) -> None:
  """Writes config.json and model.safetensors (float32; plus the tokenizer files when given)."""
  hf_config = hf_layout.hf_config(config, tokenizer)  # First: it refuses what has no layout.
  tensors = hf_layout.params_to_hf(config, params)
  os.makedirs(directory, exist_ok=True)
  # transformers refuses a safetensors file whose metadata does not name its format.
  safetensors_np.save_file(tensors, os.path.join(directory, WEIGHTS_FILE),
                           metadata={"format": "pt"})
  with open(os.path.join(directory, CONFIG_FILE), "w") as f:
    json.dump(hf_config, f, indent=2)
  if tokenizer is not None:
    tokenizer.save(directory)
