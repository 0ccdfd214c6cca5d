"""Every image family trained on Fashion-MNIST for the same CPU budget, then scored alike.

  python benchmarks/image_quality.py --budget_s=120 --workdir_root=/tmp/image_quality \
      [--classifier_workdir=DIR]

Each family's `small` digits preset, moved to Fashion-MNIST (data.source=tfds:fashion_mnist_local,
model.image_size=28, the resolution-dependent fields below), trains until its process has used
--budget_s CPU seconds (train.time_budget_s; all threads, so a shared machine gives every family
the same compute). Two-stage models split the budget: the VQ-VAE and its prior, the VAE and the
latent diffusion model on its latent, get half each. Then each draws --num_images images
(class-conditional models cycle through the ten classes) in two calls of half; the second is timed
for images/s. Scored with the classifier of configs/classifier/fashion_mnist.py:fmnist (trained here
unless --classifier_workdir names one):
  FD-FMNIST   the Fréchet distance between the classifier's penultimate features of the samples
              and of the 10,000 held-out test images (the FID formula on another network: not FID)
  class acc.  the classifier's accuracy on class-conditional samples against the asked class
  bits/dim    the run's own held-out bound (VAE: ELBO; flow: exact; VQ prior: prior + decoder)
  samples/s   the second call's images per second (its program from the compilation cache)
  run CPU/wall s  the whole run of every stage: data, compilation, the budget, the final eval
Reference rows: "real (floor)" is --num_images real training images, what a perfect generator
would score at this sample size; "mean + noise (ceiling)" is the training set's per-pixel mean
plus Gaussian noise of its per-pixel standard deviation. Sample grids go to --grid_dir. The last
lines are a markdown table.
"""
import dataclasses
import json
import os
import tempfile
import time

from absl import app, flags
import numpy as np

_BUDGET = flags.DEFINE_float("budget_s", 120.0, "CPU seconds of training per family.")
_ROOT = flags.DEFINE_string("workdir_root", "/tmp/image_quality", "Where the runs' workdirs go.")
_CLASSIFIER = flags.DEFINE_string("classifier_workdir", "", "A trained Fashion-MNIST classifier "
                                  "workdir; empty: train configs/classifier/fashion_mnist.py:fmnist.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 1000, "Images each family draws.")
_FAMILIES = flags.DEFINE_list("families", ["vae", "gan", "flow", "vq_prior", "diffusion",
                                           "latent_diffusion"], "Which rows to run.")
_GRID_DIR = flags.DEFINE_string("grid_dir", "docs/images", "Where the sample grids go.")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# generate() builds its jitted sampler at each call; with the persistent compilation cache the
# timed second call reuses the first one's compiled program (tracing it again costs ~1 s).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="image_quality_jit_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

FMNIST = {"data.source": "tfds:fashion_mnist_local", "model.image_size": 28,
          "train.num_steps": 10 ** 7, "train.eval_every": 10 ** 7,
          "checkpoint.every_steps": 10 ** 7, "train.eval_max_batches": 40,
          "logging.progress_bar": False}
# Fields the 8x8 presets set for their resolution: attention at 14 (pixels) or 7 (the 14x14
# latent's second level); fewer DDIM steps keep the 1,000 samples affordable on a CPU. Pixel
# diffusion predicts v like the latent preset: after a few hundred steps an epsilon model's error
# at the last noise level, amplified by 1/sqrt(alpha_bar_T) on the cosine schedule, clips every
# first x0 estimate to +-1 and the samples stay salt-and-pepper noise (FD above the ceiling).
DIFFUSION = {"model.attention_resolutions": (14,), "sample.num_steps": 20,
             "diffusion.objective": "v"}


@dataclasses.dataclass(frozen=True)
class Stage:
  spec: str  # config file:preset
  overrides: dict
  earlier_field: str = ""  # Set to the previous stage's workdir.


PIPELINES = {
    "vae": [Stage("configs/vae/digits.py:small", {})],
    "gan": [Stage("configs/gan/digits.py:small", {})],
    "flow": [Stage("configs/flow/digits.py:small", {})],
    "vq_prior": [Stage("configs/vqvae/digits.py:small", {}),
                 Stage("configs/vqvae/prior_digits.py:small", {}, "prior.vqvae_workdir")],
    "diffusion": [Stage("configs/diffusion/digits.py:small", DIFFUSION)],
    "latent_diffusion": [
        Stage("configs/vae/digits.py:latent", {}),
        Stage("configs/diffusion/latent_digits.py:small",
              {**DIFFUSION, "model.attention_resolutions": (7,)}, "latent.vae_workdir")],
}


def _config(spec: str, overrides: dict):
  from gen_jax.config import load_config_file
  from gen_jax.config.presets import set_field
  config = load_config_file(os.path.join(REPO, spec))
  for field, value in overrides.items():
    set_field(config, field, value)
  return config


def _train(name: str, stages: list, root: str, budget: float):
  """Runs the stages (each with budget / len(stages) CPU seconds); returns the last stage's
  (config, workdir, final metrics, CPU seconds, wall seconds)."""
  from gen_jax.train import train_and_evaluate
  workdir, cpu, wall = "", 0.0, 0.0
  for index, stage in enumerate(stages):
    overrides = {**FMNIST, **stage.overrides, "train.time_budget_s": budget / len(stages)}
    if stage.earlier_field:
      overrides[stage.earlier_field] = workdir
      del overrides["data.source"], overrides["model.image_size"]  # The earlier stage's.
      if stage.earlier_field == "latent.vae_workdir":  # Its pixels are given, and must match.
        overrides.update({"data.source": FMNIST["data.source"], "model.image_size": 28})
    config = _config(stage.spec, overrides)
    workdir = os.path.join(root, f"{name}_{index}")
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    metrics = train_and_evaluate(config, workdir)
    cpu += time.process_time() - start_cpu
    wall += time.perf_counter() - start_wall
  return config, workdir, metrics, cpu, wall


def _generate(family_name: str, config, workdir: str, count: int):
  """(images [count, H, W, C], images/s of the timed second half)."""
  import jax
  from gen_jax import families
  from gen_jax.sample import SampleRequest
  from gen_jax.train.workdir import load_workdir_params
  config, params = load_workdir_params(workdir)
  family = families.get(config.family)
  half = count // 2
  first, _ = family.generate(config, params, workdir, SampleRequest(num_samples=half, seed=1))
  jax.block_until_ready(first)
  start = time.perf_counter()
  second, _ = family.generate(config, params, workdir, SampleRequest(num_samples=half, seed=2))
  second = np.asarray(jax.device_get(second))
  rate = half / (time.perf_counter() - start)
  return np.concatenate([np.asarray(jax.device_get(first)), second]), rate


def _conditional(config) -> bool:
  """Whether the model draws images of asked classes (the VAE and the flow have no classes)."""
  if config.family == "vq_prior":
    return config.prior.num_classes > 0
  return config.model.get("num_classes", 0) > 0


def main(argv):
  del argv
  from gen_jax.eval import save_image_grid
  from gen_jax.eval.frechet import frechet_distance_of_features
  from gen_jax.eval.image_quality import class_accuracy, mean_and_noise_images, score_images
  from gen_jax.families import images
  from gen_jax.families.classifier import load_classifier
  from gen_jax.train import train_and_evaluate
  root, n = _ROOT.value, _NUM_IMAGES.value
  os.makedirs(root, exist_ok=True)
  os.makedirs(_GRID_DIR.value, exist_ok=True)
  classifier_dir = _CLASSIFIER.value
  if not classifier_dir:
    classifier_dir = os.path.join(root, "classifier")
    train_and_evaluate(_config("configs/classifier/fashion_mnist.py:fmnist",
                               {"logging.progress_bar": False}), classifier_dir)
  features_fn, logits_fn = load_classifier(classifier_dir, "--classifier_workdir")
  data = images.load_data(_config("configs/classifier/fashion_mnist.py:fmnist", {}))
  held_out = score_images(features_fn, logits_fn, data.held_out["images"])
  if n % 20:
    raise app.UsageError(f"--num_images={n}: must be a multiple of 20 (two calls cycling through "
                         "10 classes)")
  asked = np.arange(n) % 10  # The classes conditional models draw, in two halves of n / 2.

  def row(name, samples, labels=None, bits="-", rate=None, cpu=None, wall=None):
    scores = score_images(features_fn, logits_fn, samples)
    fd = frechet_distance_of_features(held_out.features, scores.features)
    accuracy = class_accuracy(scores.logits, labels) if labels is not None else None
    result = {"name": name, "fd": fd, "accuracy": accuracy, "bits": bits, "rate": rate,
              "cpu": cpu, "wall": wall}
    print(json.dumps(result), flush=True)
    return result

  pick = np.random.default_rng(0).choice(len(data.train["images"]), n, replace=False)
  results = [row("real training images (floor)", data.train["images"][pick],
                 data.train["labels"][pick]),
             row("train mean + noise (ceiling)", mean_and_noise_images(data.train["images"], n))]
  for name in _FAMILIES.value:
    config, workdir, metrics, cpu, wall = _train(name, PIPELINES[name], root, _BUDGET.value)
    samples, rate = _generate(name, config, workdir, n)
    bits = metrics.get("eval/bits_per_dim")
    results.append(row(name, samples, asked if _conditional(config) else None,
                       f"{bits:.3f}" if bits is not None else "-", rate, cpu, wall))
    save_image_grid(samples[:100], os.path.join(_GRID_DIR.value, f"{name}_fmnist.png"),
                    num_cols=10, scale=2)
  print("| model | FD-FMNIST | class accuracy | bits/dim | samples/s | run CPU s | run wall s |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for r in results:
    accuracy = f"{r['accuracy']:.3f}" if r["accuracy"] is not None else "-"
    rate = f"{r['rate']:.1f}" if r["rate"] else "-"
    cpu = f"{r['cpu']:.0f}" if r["cpu"] else "-"
    wall = f"{r['wall']:.0f}" if r["wall"] else "-"
    print(f"| {r['name']} | {r['fd']:.3f} | {accuracy} | {r['bits']} | {rate} | {cpu} | {wall} |")


if __name__ == "__main__":
  app.run(main)
