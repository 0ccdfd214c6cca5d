"""A class-conditional Transformer prior over the codes of a VQ-VAE trained on sklearn's digits
(configs/vqvae/digits.py), reporting held-out bits/dim (an upper bound on the data's NLL).

  python -m gen_jax.main --config=configs/vqvae/digits.py:small --workdir=/tmp/vqvae
  python -m gen_jax.main --config=configs/vqvae/prior_digits.py:small --workdir=/tmp/vq_prior \
      --config.prior.vqvae_workdir=/tmp/vqvae
  python -m gen_jax.sample --workdir=/tmp/vq_prior --num_samples=64 --class=3

Writes sample grids to WORKDIR/images/ at every eval (one column per class).
Presets: tiny (tests, seconds), small (about 3 minutes on a busy 2-core CPU). prior.vqvae_workdir
is empty in both: name the VQ-VAE's workdir on the command line. Expected with small over the
VQ-VAE's small preset (2026-11-23, CPU): eval/bits_per_dim 2.41 (eval/prior_bits_per_code 3.90
of a uniform 6; the reconstruction term alone is 1.38).
"""
from gen_jax.config import apply_preset
from gen_jax.config import vqvae

PRESETS = {
    "tiny": {
        "model.embed_dim": 32, "model.num_layers": 1, "model.num_heads": 2,
        "model.num_kv_heads": 1, "model.head_dim": 16, "model.mlp_dim": 64,
        "train.num_steps": 20, "train.batch_size": 16, "train.log_every": 10,
        "train.eval_every": 20, "train.eval_max_batches": 4, "optimizer.warmup_steps": 5,
        "checkpoint.every_steps": 20, "sample.num_images": 16,
    },
    # 1617 training digits of 16 codes each: a small model, stopped early, generalizes best (a
    # larger or longer-trained one memorizes them and its held-out bits/dim rise).
    "small": {
        "model.embed_dim": 64, "model.num_layers": 2, "model.head_dim": 16, "model.mlp_dim": 192,
        "optimizer.weight_decay": 0.1,
        "train.num_steps": 400, "train.batch_size": 64, "train.log_every": 50,
        "train.eval_every": 100, "train.eval_max_batches": -1, "optimizer.warmup_steps": 50,
        "checkpoint.every_steps": 400,
    },
}


def get_config(arg=None):
  return apply_preset(vqvae.prior_base(), arg, PRESETS, default="small")
