"""The vqvae and vq_prior family bases: a VQ-VAE on small images, and the autoregressive
Transformer prior over its codes."""
import ml_collections

from gen_jax.config import llm
from gen_jax.config.common import base_config
from gen_jax.config.image import image_base


def base() -> ml_collections.ConfigDict:
  """The vqvae family: gen_jax.models.vqvae.VQVAEConfig's fields as config.model."""
  config = image_base("vqvae")
  config.model.update(dict(
      channels=(64,),  # Each stage halves the resolution: 8x8 digits -> a 4x4 grid of codes.
      num_res_blocks=1,
      num_codes=64,  # K.
      code_dim=16,  # D.
  ))
  config.objective = ml_collections.ConfigDict(dict(
      commitment_weight=0.25,  # beta of ||z_e - sg(z_q)||^2 (the paper's 0.25).
      codebook_decay=0.99,  # The codebook EMA's decay (VQ-VAE-2's gamma).
      laplace_epsilon=1e-5,  # Smoothing of the EMA cluster sizes before dividing by them.
      # A code whose EMA usage (vectors per batch) falls below this is moved onto a random
      # encoder output of the batch (Jukebox's restarts); 0: never.
      restart_threshold=1.0,
  ))
  return config


# The Transformer fields a prior's config.model declares (the llm base's defaults). vocab_size
# and max_seq_len are not among them: they follow from the VQ-VAE (codes, classes, code grid).
PRIOR_MODEL_FIELDS = ("embed_dim", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                      "mlp_dim", "rope_base", "norm_eps", "tie_embeddings", "dtype", "param_dtype",
                      "attention_impl", "sequence_parallel", "sliding_window", "remat",
                      "scan_unroll")


def prior_base() -> ml_collections.ConfigDict:
  """The vq_prior family: a decoder-only Transformer over a trained VQ-VAE's codes."""
  config = base_config()
  config.family = "vq_prior"
  llm_model = llm.base().model
  config.model = ml_collections.ConfigDict({name: llm_model[name] for name in PRIOR_MODEL_FIELDS})
  config.model.update(dict(embed_dim=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                           mlp_dim=384))
  config.prior = ml_collections.ConfigDict(dict(
      # The workdir of a trained vqvae run: its codes are the data (its data source and
      # train/held-out split), and its decoder turns sampled codes into images.
      vqvae_workdir="",
      # > 0: a class token after the start token, predicted first, so --class can pick the class
      # of samples; it must equal the data's classes (10 for digits). 0: an unconditional prior.
      num_classes=10,
  ))
  config.sample = ml_collections.ConfigDict(dict(
      num_images=64,  # Images in each PNG grid written at eval time.
      temperature=1.0,  # Of the codes' sampling, unless gen_jax.sample --temperature > 0.
  ))
  config.optimizer.learning_rate = 1e-3
  config.optimizer.weight_decay = 0.01
  return config
