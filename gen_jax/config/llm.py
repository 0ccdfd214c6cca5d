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
      attention_impl="xla",  # ops.ATTENTION_IMPLS: xla, pallas, cudnn, auto.
      sliding_window=0,  # Attend to this many most recent tokens, itself included; 0: all.
      remat="none",
      # Mixture of experts (gen_jax.models.moe): experts per block MLP, 0 for the dense SwiGLU.
      num_experts=0,
      experts_per_token=2,  # Top-k: experts each token is routed to, in [1, num_experts].
      # Slots per expert in a sequence of t tokens: ceil(factor * t * experts_per_token /
      # num_experts), at most t; assignments past it are dropped and counted. 0: no drop.
      expert_capacity_factor=1.25,
      # Weight-only quantization of the attention and MLP projections (gen_jax.quant), for
      # inference on params from gen_jax.quant.quantize_params: 0 keeps float kernels; 8 or 4
      # stores symmetric int8 / int4 codes with one scale per `weight_group_size` inputs of each
      # output.
      # Embeddings, norms and lm_head stay float; not with num_experts > 0. The group size must
      # divide embed_dim, num_heads * head_dim and mlp_dim (64 divides SmolLM2's 576 and 1536).
      weight_bits=0,
      weight_group_size=64,
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
  # Weights of the auxiliary losses added to the next-token loss (MoE only).
  config.objective = ml_collections.ConfigDict(dict(
      router_aux_loss_weight=0.01,  # Switch Transformer load balancing (Fedus et al., 2021).
      router_z_loss_weight=0.0,  # ST-MoE router z-loss (Zoph et al., 2022); 1e-3 in the paper.
  ))
  return config
