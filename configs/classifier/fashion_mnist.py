"""A small CNN classifier on Fashion-MNIST, for sample-quality metrics of the image families.

  python -m gen_jax.main --config=configs/classifier/fashion_mnist.py:fmnist \
      --workdir=/tmp/fmnist_clf

Reads Fashion-MNIST's IDX files through the repo's tfds builder (data.manual_dir, "" searches
../shared/data/fashion-mnist and /usr/share/datasets/fashion-mnist) and reports eval/accuracy on
its 10,000 test images. Its penultimate features (model.feature_dim) are what the Fréchet distance
of generated against real images is computed on, and its accuracy on class-conditional samples
says whether they show their class (gen_jax.families.classifier.load_classifier).

Presets: tiny (tests: sklearn digits 8x8, seconds, held-out accuracy about 0.93); fmnist (the
default: 2,500 steps of 64, about 2.7 epochs). Measured 2026-11-23 on the 2-core CPU machine (shared
with other jobs): fmnist reached eval/accuracy 0.9089 (eval/loss 0.254) on the 10,000 test images,
0.873 at step 1,000 and 0.892 at 1,500, in 3 min 40 s wall (about 1,240 images/s) with the data
already prepared; the first run also prepares it once into data.tfds_data_dir (20-40 s).
The time assumes the train step calls its loss directly when train.grad_accum_steps is 1: inside
a one-trip lax.scan, XLA:CPU runs these convolutions about 6x slower (about 20 minutes).
"""
from gen_jax.config import apply_preset
from gen_jax.config import classifier

PRESETS = {
    "tiny": {
        "model.channels": (16, 32, 64), "model.feature_dim": 32,
        "train.num_steps": 60, "train.batch_size": 32, "train.log_every": 20,
        "train.eval_every": 60, "train.eval_max_batches": -1, "optimizer.warmup_steps": 5,
        "optimizer.learning_rate": 1e-2, "checkpoint.every_steps": 60, "sample.num_images": 16,
    },
    "fmnist": {
        "data.source": "tfds:fashion_mnist_local", "model.image_size": 28,
        "train.num_steps": 2500, "train.batch_size": 64, "train.log_every": 100,
        "train.eval_every": 500, "train.eval_max_batches": -1, "optimizer.warmup_steps": 100,
        "optimizer.learning_rate": 3e-3, "checkpoint.every_steps": 500,
    },
}


def get_config(arg=None):
  return apply_preset(classifier.base(), arg, PRESETS, default="fmnist")
