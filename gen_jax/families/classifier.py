"""The classifier family: a small CNN trained with cross-entropy, whose features measure samples.

Trained on Fashion-MNIST (configs/classifier/fashion_mnist.py), it stands in for Inception-v3,
whose weights cannot be had offline: `load_classifier(workdir)` gives the image families' metrics
its penultimate features (for a Fréchet distance between real and generated images) and its
logits (for the accuracy of class-conditional samples). It reports "eval/accuracy".
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gen_jax import data as data_lib
from gen_jax.config import load_workdir_config
from gen_jax.config.errors import ConfigError, require
from gen_jax.families import images
from gen_jax.models.classifier import Classifier, ClassifierConfig
from gen_jax.train.task import WEIGHT, ParamSpec, Task
from gen_jax.train.workdir import load_workdir_params


def validate(config: ml_collections.ConfigDict) -> None:
  images.validate_image_config(config)
  m = config.model
  require(len(m.channels) > 0 and all(c > 0 for c in m.channels), "model.channels",
          f"must be a non-empty tuple of positive widths, got {m.channels}")
  downsample = 2 ** (len(m.channels) - 1)
  require(m.image_size >= downsample, "model.image_size",
          f"{m.image_size} is smaller than 2**(len(model.channels) - 1) = {downsample}: the "
          "last block would see no pixels")
  require(m.feature_dim > 0, "model.feature_dim", f"must be positive, got {m.feature_dim}")
  require(m.num_classes >= 2, "model.num_classes", f"must be at least 2, got {m.num_classes}")


def model(config) -> Classifier:
  return Classifier(ClassifierConfig.from_config(config.model))


def param_spec(config) -> ParamSpec:
  """A random init; every parameter trains."""
  net = model(config)
  dummy = jnp.zeros((1, *images.image_shape(config)), jnp.float32)
  return ParamSpec(lambda rng: net.init(rng, dummy)["params"])


def classification_terms(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
  """Per-example cross-entropy (nats) and correctness (1.0 where the argmax is the label).

  logits [b, num_classes], labels [b] int -> {"loss": [b], "accuracy": [b]}.
  """
  loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return {"loss": loss, "accuracy": correct}


def make_loss_fn(config):
  """loss_fn(params, batch, rng) -> (cross-entropy sum, sums); the loop reports accuracy too."""
  net = model(config)

  def loss_fn(params, batch, rng):
    del rng  # Deterministic: no dropout, no augmentation.
    terms = classification_terms(net.apply({"params": params}, batch["images"]), batch["labels"])
    w = batch[data_lib.EXAMPLE_WEIGHT]
    return (terms["loss"] * w).sum(), {WEIGHT: w.sum(), "accuracy": (terms["accuracy"] * w).sum()}
  return loss_fn


def dry_run_inputs(config):
  """(loss_fn, global batch shapes) without reading data."""
  return make_loss_fn(config), images.batch_shapes(config)


def build_task(config: ml_collections.ConfigDict, workdir: str, resuming: bool = False) -> Task:
  del workdir, resuming  # Writes nothing besides metrics and checkpoints; derives nothing.
  data = images.load_data(config)
  require(data.num_classes == config.model.num_classes, "model.num_classes",
          f"{config.model.num_classes}, but data {config.data.source!r} has {data.num_classes} "
          f"classes {data.class_names}" + (" (no labels: a classifier needs class subfolders)"
                                           if not data.class_names else ""))
  train_data, eval_data = images.pipelines(config, data)
  return Task(
      params=param_spec(config),
      loss_fn=make_loss_fn(config),
      train_data=train_data,
      eval_data=eval_data,
      eval_metrics=lambda totals: {},  # eval/loss and eval/accuracy come from the sums.
      throughput_unit="examples",
      units_per_example=1,
      progress_metric="loss",
  )


def sample(config, params, workdir: str, request) -> str:
  del config, params, request
  raise ConfigError("--workdir", f"{workdir!r} holds a classifier run: a classifier does not "
                    "generate images (its features and logits serve the sample metrics)")


def load_classifier(workdir: str, field: str = "--workdir"):
  """(features_fn, logits_fn) of a trained classifier workdir's newest checkpoint.

  features_fn(images) -> [n, feature_dim] and logits_fn(images) -> [n, num_classes], float32, of
  images [n, H, W, C] in [-1, 1] with the classifier's own (model.image_size, image_channels);
  another shape is a ValueError. Raises ConfigError naming `field` (the flag or config field the
  caller took `workdir` from) when the directory is not a classifier's workdir.
  """
  saved = load_workdir_config(workdir)
  if saved is None:
    raise ConfigError(field, f"{workdir!r} has no config.json: not a training workdir")
  if saved.family != "classifier":
    raise ConfigError(field, f"{workdir!r} holds a {saved.family!r} run, not a classifier")
  config, params = load_workdir_params(workdir, field)
  net = model(config)
  shape = images.image_shape(config)
  features = jax.jit(lambda p, x: net.apply({"params": p}, x, method=Classifier.features))
  logits = jax.jit(lambda p, x: net.apply({"params": p}, x))

  def checked(fn):
    def apply(batch):
      if tuple(batch.shape[1:]) != shape:
        expected = ", ".join(map(str, shape))
        raise ValueError(f"the classifier in {workdir!r} takes images [n, {expected}], got "
                         f"{tuple(batch.shape)}")
      return fn(params, batch)
    return apply
  return checked(features), checked(logits)
