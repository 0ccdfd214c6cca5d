"""Latent diffusion (Rombach et al., 2022) on sklearn's 8x8 digits: a class-conditional U-Net
trained in the 4x4x4 latent space of a spatial-latent VAE, its samples decoded to pixels.

  python -m gen_jax.main --config=configs/vae/digits.py:latent --workdir=/tmp/ld_vae
  python -m gen_jax.main --config=configs/diffusion/latent_digits.py:small \
      --config.latent.vae_workdir=/tmp/ld_vae --workdir=/tmp/ld
  python -m gen_jax.sample --workdir=/tmp/ld --class=3 --guidance=2 --num_samples=16

Writes decoded sample grids (one row per class) to WORKDIR/images/ at every eval; eval/loss is
the diffusion objective on held-out latents. Presets: tiny (tests, seconds; with the VAE's
latent_tiny preset), small (3000 steps). Measured 2026-11-23 (2-core CPU, shared): the VAE's latent
preset trains in 40 s (reconstruction 0.40 bits/dim); small with the epsilon objective reached
eval/loss 0.188 / 0.169 / 0.164 at steps 1000 / 2000 / 3000 (26 min), but its unclipped samples
diverged (see _CONDITIONED below), so the presets now predict v; small with v is not yet measured on
digits (benchmarks/image_quality.py runs it on Fashion-MNIST).
"""
from gen_jax.config import apply_preset
from gen_jax.config import diffusion

# v-prediction: latents are not clipped at sampling (sample.clip_denoised is False), and with
# epsilon-prediction the cosine schedule's first DDIM step multiplies the noise estimate's error by
# sqrt(alpha_bar_980 / alpha_bar_999) ~ 630 (samples of std ~800 where the data has 1); v keeps
# every step's x0 and noise estimates bounded.
_CONDITIONED = {"model.num_classes": 10, "sample.guidance_scale": 2.0, "diffusion.objective": "v"}

PRESETS = {
    "tiny": {**diffusion.TINY, **_CONDITIONED},
    "small": {
        # The 4x4 latent: two levels (4, 2), attention at 2 and in the middle.
        **_CONDITIONED, "model.base_channels": 64, "model.channel_multipliers": (1, 2),
        "model.attention_resolutions": (2,), "optimizer.learning_rate": 1e-3,
        "train.num_steps": 3000, "train.batch_size": 64, "train.log_every": 50,
        "train.eval_every": 1000, "train.eval_max_batches": -1, "optimizer.warmup_steps": 100,
        "checkpoint.every_steps": 1000,
    },
}


def get_config(arg=None):
  return apply_preset(diffusion.latent_base(), arg, PRESETS, default="small")
