"""A class-conditional diffusion model on sklearn's 8x8 digits, with classifier-free guidance.

  python -m gen_jax.main --config=configs/diffusion/digits.py:small --workdir=/tmp/diffusion
  python -m gen_jax.sample --workdir=/tmp/diffusion --class=3 --guidance=2 --num_samples=16

Writes a sample grid (one row per class) to WORKDIR/images/ at every eval and reports the held-out
loss (eval/loss: the objective's MSE at random timesteps) with eval/mse_epsilon, mse_v and mse_x0.
Presets: tiny (tests, seconds; a U-Net), dit_tiny (the same with a DiT), small (3000 steps, about
9 minutes on a busy 2-core CPU: eval/loss 0.141, 0.130, 0.127 at steps 1000, 2000, 3000, and
rows of recognisable digits, each its row's class; --class=3 --guidance=2 draws sixteen 3s).
"""
from gen_jax.config import apply_preset
from gen_jax.config import diffusion

_TINY = {**diffusion.TINY, "model.num_classes": 10, "sample.guidance_scale": 2.0}

PRESETS = {
    "tiny": _TINY,
    "dit_tiny": {**_TINY, "model.backbone": "dit", "model.hidden_size": 32},
    "small": {
        "model.num_classes": 10, "sample.guidance_scale": 2.0, "optimizer.learning_rate": 1e-3,
        "train.num_steps": 3000, "train.batch_size": 64, "train.log_every": 50,
        "train.eval_every": 1000, "train.eval_max_batches": -1, "optimizer.warmup_steps": 100,
        "checkpoint.every_steps": 1000,
    },
}


def get_config(arg=None):
  return apply_preset(diffusion.base(), arg, PRESETS, default="small")
