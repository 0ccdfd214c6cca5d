"""Hugging Face BERT directories (config.json, model.safetensors, tokenizer.json) as
gen_jax.models.bert parameters."""
import json
import os

import jax
import numpy as np
import tokenizers

from gen_jax.interop.hf_io import read_tensors
from gen_jax.models.bert import Bert, BertConfig


def config_from_hf(hf: dict, source: str) -> BertConfig:
  """BertConfig of a BertModel config.json; ValueError names a field gen_jax's BERT lacks."""
  expected = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
  for field, value in expected.items():
    if hf.get(field, value) != value:
      raise ValueError(f"{source}: {field}={hf[field]!r}; gen_jax's BERT has {value!r}")
  return BertConfig(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                    num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                    intermediate_size=hf["intermediate_size"],
                    max_position_embeddings=hf["max_position_embeddings"],
                    type_vocab_size=hf["type_vocab_size"], layer_norm_eps=hf["layer_norm_eps"])


def _names(config: BertConfig) -> dict[tuple[str, ...], str]:
  """{gen_jax param path: Hugging Face tensor name} (Dense kernels are the transposed weights)."""
  names = {("word_embeddings", "embedding"): "embeddings.word_embeddings.weight",
           ("position_embeddings", "embedding"): "embeddings.position_embeddings.weight",
           ("token_type_embeddings", "embedding"): "embeddings.token_type_embeddings.weight",
           ("embedding_norm", "scale"): "embeddings.LayerNorm.weight",
           ("embedding_norm", "bias"): "embeddings.LayerNorm.bias"}
  modules = {"query": "attention.self.query", "key": "attention.self.key",
             "value": "attention.self.value", "attention_out": "attention.output.dense",
             "attention_norm": "attention.output.LayerNorm", "intermediate": "intermediate.dense",
             "output": "output.dense", "output_norm": "output.LayerNorm"}
  for i in range(config.num_layers):
    for ours, theirs in modules.items():
      prefix = f"encoder.layer.{i}.{theirs}"
      first = "scale" if ours.endswith("norm") else "kernel"
      names[(f"layer_{i}", ours, first)] = f"{prefix}.weight"
      names[(f"layer_{i}", ours, "bias")] = f"{prefix}.bias"
  return names


def params_from_hf(config: BertConfig, tensors: dict[str, np.ndarray], source: str) -> dict:
  """The Bert param tree (float32 numpy) of a BertModel state dict; ValueError names a missing
  tensor or a wrong shape. A "bert." prefix (BertForX checkpoints) is accepted."""
  tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
  params = {}
  for path, name in _names(config).items():
    if name not in tensors:
      raise ValueError(f"{source}: has no tensor {name!r}")
    value = np.asarray(tensors[name], np.float32)
    value = value.T if path[-1] == "kernel" else value
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  # Shapes checked against the module's own init, abstractly (nothing allocated).
  expected = jax.eval_shape(lambda: Bert(config).init(
      jax.random.key(0), np.zeros((1, 2), np.int32), np.ones((1, 2), np.int32)))["params"]
  for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(expected),
                               jax.tree_util.tree_leaves(params)):
    if want.shape != got.shape:
      name = "/".join(k.key for k in path)
      raise ValueError(f"{source}: {name} has shape {got.shape}, the config needs {want.shape}")
  return params


def load_bert(directory: str) -> tuple[BertConfig, dict, tokenizers.Tokenizer]:
  """(config, params, the directory's tokenizer.json) of a Hugging Face BERT directory."""
  config_path = os.path.join(directory, "config.json")
  if not os.path.exists(config_path):
    raise ValueError(f"{directory}: has no config.json: not a Hugging Face model directory")
  with open(config_path) as f:
    config = config_from_hf(json.load(f), config_path)
  params = params_from_hf(config, read_tensors(directory), directory)
  tokenizer_path = os.path.join(directory, "tokenizer.json")
  if not os.path.exists(tokenizer_path):
    raise ValueError(f"{directory}: has no tokenizer.json")
  return config, params, tokenizers.Tokenizer.from_file(tokenizer_path)
