"""The diffusion family base: a denoising diffusion model (U-Net or DiT) on small images."""
import ml_collections

from gen_jax.config.image import image_base


# The tests' preset of every diffusion config (conditioning fields apart): one resolution level
# (and the middle block's attention), a U-Net that compiles in seconds.
TINY = {
    "model.base_channels": 16, "model.channel_multipliers": (1,),
    "model.attention_resolutions": (), "model.num_heads": 2,
    "diffusion.num_timesteps": 100, "sample.num_steps": 10,
    "train.num_steps": 20, "train.batch_size": 16, "train.log_every": 10, "train.eval_every": 10,
    "train.eval_max_batches": 2, "train.ema_decay": 0.9, "optimizer.learning_rate": 2e-3,
    "optimizer.warmup_steps": 5, "checkpoint.every_steps": 10, "sample.num_images": 16,
}


def base() -> ml_collections.ConfigDict:
  config = image_base("diffusion")
  config.model.update(dict(
      backbone="unet",  # "unet" (gen_jax.models.unet) or "dit" (gen_jax.models.dit).
      # 0: unconditional; > 0: class-conditional on the data's labels (must equal the data's
      # number of classes), with a null class for classifier-free guidance.
      num_classes=0,
      # > 0: cross-attention to text.encoder's token states, which are this wide.
      context_dim=0,
      # U-Net (Ho et al., 2020; Dhariwal & Nichol, 2021).
      base_channels=32,
      channel_multipliers=(1, 2),  # One per resolution level; each level after the first halves it.
      num_res_blocks=1,
      attention_resolutions=(4,),  # Spatial sizes with self-attention.
      num_heads=4,  # Shared with the DiT.
      num_groups=8,  # GroupNorm groups.
      dropout=0.0,
      # DiT (Peebles & Xie, 2023).
      patch_size=2,
      hidden_size=64,
      depth=2,
      mlp_ratio=4.0,
  ))
  config.diffusion = ml_collections.ConfigDict(dict(
      schedule="cosine",  # "linear" (Ho et al.) or "cosine" (Nichol & Dhariwal).
      num_timesteps=1000,
      objective="epsilon",  # What the network predicts: "epsilon", "v" or "x0".
      # Probability of training a class-conditional model on the null class instead of the label,
      # so one network also gives the unconditional prediction guidance needs.
      condition_dropout=0.1,
  ))
  # Text conditioning (gen_jax.families.conditioning): a frozen language model's token states,
  # attended to by cross-attention. Labelled data is captioned from its class names.
  config.text = ml_collections.ConfigDict(dict(
      # "" (none), or a language model as in llm's init.source: "workdir:DIR", "gguf:PATH",
      # "hf:DIR". Needs model.context_dim = its width and model.num_classes = 0.
      encoder="",
      caption_template="a picture of the digit {}",  # {} is a class name.
      max_tokens=16,  # Captions and prompts are padded to this many tokens.
  ))
  config.sample.update(dict(
      sampler="ddim",  # "ddim", "ddpm" (all num_timesteps steps) or "dpm_solver" (++(2M)).
      num_steps=50,  # Model calls of ddim and dpm_solver; at most diffusion.num_timesteps.
      eta=0.0,  # DDIM's noise: 0 deterministic, 1 DDPM-like.
      # Classifier-free guidance: uncond + scale * (cond - uncond); 1 is the conditional model
      # alone. Only for conditioned models.
      guidance_scale=1.0,
      clip_denoised=True,  # Clip each step's predicted x0 to the data range [-1, 1].
  ))
  config.train.ema_decay = 0.999  # Samples and evaluation use the weights' EMA.
  config.optimizer.learning_rate = 2e-4
  return config


def latent_base() -> ml_collections.ConfigDict:
  """The latent_diffusion family: the diffusion model above, trained in the spatial latent space
  of a trained VAE (Rombach et al., 2022). model.image_size / image_channels describe the pixels
  (the VAE's); the backbone's own input is the VAE's latent [h, w, latent_dim]."""
  config = base()
  config.family = "latent_diffusion"
  config.latent = ml_collections.ConfigDict(dict(
      # The workdir of a vae run with model.spatial_latent=True (configs/vae/digits.py:latent).
      vae_workdir="",
  ))
  # Latents are not bounded like pixels: clipping each step's predicted x0 to [-1, 1] would cut
  # them (validate refuses True).
  config.sample.clip_denoised = False
  return config
