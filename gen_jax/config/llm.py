"""The llm family base: a LLaMA-style decoder trained on packed text."""
import ml_collections

from gen_jax.config.common import base_config


def base() -> ml_collections.ConfigDict:
  config = base_config()
  config.family = "llm"
  config.model = ml_collections.ConfigDict(dict(
      vocab_size=4096,  # Also the size the BPE tokenizer is trained to.
      embed_dim=256,
      num_layers=4,
      num_heads=4,
      num_kv_heads=2,
      head_dim=64,
      mlp_dim=704,
      max_seq_len=128,
      rope_base=10000.0,
      norm_eps=1e-6,
      tie_embeddings=False,
      dtype="float32",
      param_dtype="float32",
      attention_impl="xla",
      remat="none",
  ))
  config.data = ml_collections.ConfigDict(dict(
      source="pydoc",  # 'pydoc', a text file, a folder, a glob, or 'tfds:NAME'.
      eval_source="",  # Held-out text; empty: hold out the last eval_fraction of `source`.
      eval_fraction=0.05,
      tfds_split="train",  # For tfds sources.
      tfds_eval_split="",  # For a tfds source without eval_source; empty: split by eval_fraction.
      tfds_text_key="text",
      tfds_data_dir="",
  ))
  return config
