"""The classifier family end to end: a tiny CLI run on digits, then load_classifier on it."""
import jax
import numpy as np
import pytest

from gen_jax.config import load_workdir_config, save_workdir_config
from gen_jax.config.errors import ConfigError
from gen_jax.data.images import load_images
from gen_jax.families import classifier
from gen_jax.train.metrics import latest_metrics
from gen_jax.train.workdir import load_workdir_params
from tests.conftest import REPO_ROOT, checkpoint_tree, run_cli, tiny_config

pytestmark = pytest.mark.xdist_group("classifier")


def test_tiny_run_then_load_classifier(tmp_path):
  workdir = str(tmp_path / "clf")
  result = run_cli("gen_jax.main", f"--config={REPO_ROOT}/configs/classifier/fashion_mnist.py:tiny",
                   f"--workdir={workdir}", "--config.mesh.num_devices=1")
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = latest_metrics(workdir)
  assert metrics["eval/accuracy"] > 0.7  # Chance is 0.1; 60 steps reach about 0.9.
  assert any(k[:2] == ("params", "backbone") for k in checkpoint_tree(workdir, 60))

  features_fn, logits_fn = classifier.load_classifier(workdir)
  config = load_workdir_config(workdir)
  held_out = load_images(config.data, 8, 1, config.seed).held_out  # The run's own split.
  images, labels = held_out["images"], held_out["labels"]
  logits = np.asarray(logits_fn(images), np.float64)
  features = np.asarray(features_fn(images), np.float64)
  assert logits.shape == (len(labels), 10) and features.shape == (len(labels), 32)
  # The run evaluated every held-out image (eval_max_batches=-1) in padded batches of 32; one
  # image whose top two logits tie to float rounding may differ, no more.
  accuracy = (logits.argmax(-1) == labels).mean()
  assert abs(accuracy - metrics["eval/accuracy"]) <= 1 / len(labels) + 1e-9
  # eval/loss is the mean cross-entropy: numpy's log-softmax of the loaded logits.
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  np.testing.assert_allclose(-log_probs[np.arange(len(labels)), labels].mean(),
                             metrics["eval/loss"], rtol=1e-4)
  # The features are the penultimate layer: the logits are the dense head applied to them.
  _, params = load_workdir_params(workdir)
  head = jax.tree.map(np.asarray, params["head"])
  np.testing.assert_allclose(features @ head["kernel"] + head["bias"], logits, rtol=1e-4, atol=1e-4)

  with pytest.raises(ValueError, match=r"takes images \[n, 8, 8, 1\], got \(2, 16, 16, 1\)"):
    features_fn(np.zeros((2, 16, 16, 1), np.float32))
  with pytest.raises(ConfigError, match="--workdir: .*a classifier does not generate images"):
    classifier.sample(config, params, workdir, request=None)

  # Not a classifier's workdir: the error names the field the caller passed.
  vae_dir = tmp_path / "vae"
  vae_dir.mkdir()
  save_workdir_config(tiny_config("configs/vae/digits.py"), str(vae_dir))
  with pytest.raises(ConfigError, match="metrics.classifier_workdir: .*'vae' run, not a clas"):
    classifier.load_classifier(str(vae_dir), field="metrics.classifier_workdir")
  with pytest.raises(ConfigError, match="metrics.classifier_workdir: .*no config.json"):
    classifier.load_classifier(str(tmp_path), field="metrics.classifier_workdir")


def test_validate_names_the_field(tmp_path):
  config = tiny_config("configs/classifier/fashion_mnist.py")
  classifier.validate(config)
  for field, value, message in (("model.channels", (), "must be a non-empty tuple"),
                                ("model.image_size", 2, "2 is smaller than 2\\*\\*"),
                                ("model.feature_dim", 0, "must be positive"),
                                ("model.num_classes", 1, "must be at least 2")):
    bad = tiny_config("configs/classifier/fashion_mnist.py", **{field: value})
    with pytest.raises(ConfigError, match=f"{field}: {message}"):
      classifier.validate(bad)
  mismatched = tiny_config("configs/classifier/fashion_mnist.py", **{"model.num_classes": 5})
  with pytest.raises(ConfigError, match="model.num_classes: 5, but data 'digits' has 10 classes"):
    classifier.build_task(mismatched, str(tmp_path))
