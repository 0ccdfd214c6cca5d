"""A class-conditional DCGAN on sklearn's 8x8 digits (non-saturating loss, R1, generator EMA).

  python -m gen_jax.main --config=configs/gan/digits.py:small --workdir=/tmp/gan
  python -m gen_jax.sample --workdir=/tmp/gan --class=2 --num_samples=16

Writes a sample grid, one row per class, to WORKDIR/images/ at every eval. Presets: tiny (tests,
seconds), small (a few minutes on a CPU: recognizable digits of the asked class).
"""
from gen_jax.config import apply_preset
from gen_jax.config import gan

PRESETS = {
    "tiny": {
        "model.num_classes": 10, "model.latent_dim": 16,
        "model.generator_channels": (32, 16), "model.discriminator_channels": (16, 32),
        "gan.r1_weight": 1.0, "train.ema_decay": 0.9,
        "train.num_steps": 20, "train.batch_size": 16, "train.log_every": 5,
        "train.eval_every": 10, "train.eval_max_batches": 2, "checkpoint.every_steps": 10,
        "sample.num_images": 20,
    },
    "small": {
        "model.num_classes": 10, "gan.r1_weight": 0.1,
        "train.num_steps": 4000, "train.batch_size": 64, "train.log_every": 50,
        "train.eval_every": 500, "train.eval_max_batches": -1, "checkpoint.every_steps": 1000,
        "sample.num_images": 80,
    },
}


def get_config(arg=None):
  return apply_preset(gan.base(), arg, PRESETS, default="small")
