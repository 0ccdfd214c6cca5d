"""A convolutional VAE on sklearn's 8x8 digits, reporting the held-out negative ELBO.

  python -m gen_jax.main --config=configs/vae/digits.py:tiny --workdir=/tmp/vae
  python -m gen_jax.sample --workdir=/tmp/vae --num_samples=64

Writes reconstruction and sample grids to WORKDIR/images/ at every eval. Presets: tiny (tests,
seconds), small (a few minutes on a CPU); latent_tiny and latent: a spatial 4x4x4 latent with a
small KL weight (detail kept in the latent), the autoencoder of configs/diffusion/latent_digits.py.
"""
from gen_jax.config import apply_preset
from gen_jax.config import vae

_TINY = {
    "model.channels": (16, 32), "model.latent_dim": 8,
    "train.num_steps": 30, "train.batch_size": 16, "train.log_every": 10,
    "train.eval_every": 15, "train.eval_max_batches": 4, "optimizer.warmup_steps": 5,
    "checkpoint.every_steps": 15, "sample.num_images": 16,
}
_SMALL = {
    "train.num_steps": 3000, "train.batch_size": 64, "train.log_every": 50,
    "train.eval_every": 500, "train.eval_max_batches": -1, "optimizer.warmup_steps": 100,
    "checkpoint.every_steps": 1000,
}
# One stride-2 stage: 8x8 images -> a 4x4 map of 4 channels. KL weight 0.01: the latent keeps
# the detail the decoder needs, as LDM's lightly regularized autoencoders do.
_SPATIAL = {"model.channels": (32,), "model.latent_dim": 4, "model.spatial_latent": True,
            "objective.kl_weight": 0.01}

PRESETS = {
    "tiny": _TINY,
    "small": _SMALL,
    "latent_tiny": {**_TINY, **_SPATIAL, "train.num_steps": 10, "train.eval_every": 10,
                    "checkpoint.every_steps": 10},
    "latent": {**_SMALL, **_SPATIAL},
}


def get_config(arg=None):
  return apply_preset(vae.base(), arg, PRESETS, default="small")
