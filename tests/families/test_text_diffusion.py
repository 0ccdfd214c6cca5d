"""Text-conditioned diffusion: the caption table is the encoder's own hidden states (padding masked
and zero), condition dropout gives the all-masked null context, and a tiny run through the CLI
samples a free-text prompt with guidance; prompts and configs that do not fit fail naming the
field."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from gen_jax.config import ConfigError
from gen_jax.families import conditioning, diffusion, llm_sources
from gen_jax.models import Transformer
from gen_jax.sample import SampleRequest
from gen_jax.train import train_and_evaluate
from tests.conftest import run_cli, tiny_config
from tests.families.test_diffusion import _grid_shape

CONFIG = "configs/diffusion/text_digits.py"


@pytest.fixture(scope="module")
def encoder_workdir(tmp_path_factory):
  """A tiny language model (2 steps of pretraining): the text encoder."""
  workdir = str(tmp_path_factory.mktemp("lm"))
  train_and_evaluate(tiny_config(**{"train.num_steps": 2, "train.eval_every": 2,
                                    "checkpoint.every_steps": 2}), workdir)
  return workdir


def _config(encoder_workdir, **overrides):
  return tiny_config(CONFIG, **{"text.encoder": f"workdir:{encoder_workdir}",
                                "model.context_dim": 64, "mesh.num_devices": 1, **overrides})


def test_caption_states_are_the_encoders_hidden_states_and_dropout_masks_them(encoder_workdir,
                                                                              tmp_path):
  config = _config(encoder_workdir)
  table = conditioning.for_training(config, ("zero", "seven"), str(tmp_path))
  with open(tmp_path / conditioning.CAPTIONS_FILE) as f:
    assert json.load(f) == ["a picture of the digit zero", "a picture of the digit seven"]
  loaded = llm_sources.load(f"workdir:{encoder_workdir}", "x")
  for row, caption in enumerate(["a picture of the digit zero", "a picture of the digit seven"]):
    ids = loaded.tokenizer.encode(caption)
    hidden = Transformer(loaded.config).apply({"params": loaded.params}, jnp.asarray([ids]),
                                              outputs="hidden")[0]
    np.testing.assert_allclose(table.context[row, :len(ids)], hidden, rtol=1e-5, atol=1e-5)
    assert table.context_mask[row].tolist() == [True] * len(ids) + [False] * (16 - len(ids))
    assert not table.context[row, len(ids):].any()
  kwargs = table.of_labels(jnp.asarray([1, 0, 1]), dropped=jnp.asarray([False, True, False]))
  np.testing.assert_array_equal(kwargs["context"][0], table.context[1])
  assert kwargs["context_mask"][0].any() and not kwargs["context_mask"][1].any()
  null = table.null(3)
  assert null["context"].shape == (3, 16, 64) and not null["context_mask"].any()

  with pytest.raises(ConfigError, match=r"model.context_dim: 32, but text.encoder's token states "
                                        r"are 64 wide \(set model.context_dim=64\)"):
    conditioning.load_encoder(_config(encoder_workdir, **{"model.context_dim": 32}))
  with pytest.raises(ConfigError, match=r"text.caption_template: .* is \d\d tokens; "
                                        r"text.max_tokens is 16"):
    conditioning.for_training(_config(encoder_workdir, **{
        "text.caption_template": "{} " + "word " * 16}), ("a",), str(tmp_path))


def test_tiny_run_trains_and_samples_a_prompt_with_guidance(encoder_workdir, tmp_path):
  workdir = str(tmp_path / "text_diffusion")
  result = run_cli("gen_jax.main", f"--config={CONFIG}:tiny", f"--workdir={workdir}",
                   f"--config.text.encoder=workdir:{encoder_workdir}", "--config.model.context_dim=64",
                   "--config.mesh.num_devices=1")
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    last = [r for r in map(json.loads, f) if "eval/loss" in r][-1]
  assert last["step"] == 20 and 0 < last["eval/loss"] < 0.95, last
  grid = np.asarray(Image.open(os.path.join(workdir, "images", "samples_000020.png")))
  assert grid.shape == _grid_shape(rows=10, cols=2) and grid.std() > 5  # A row per caption.

  sample = run_cli("gen_jax.sample", f"--workdir={workdir}", "--num_samples=4",
                   "--prompt=a picture of the digit 7", "--guidance=2")
  assert sample.returncode == 0, sample.stderr[-3000:]
  assert "Wrote 4 samples of 'a picture of the digit 7'" in sample.stdout
  assert np.asarray(Image.open(os.path.join(workdir, "samples.png"))).shape == _grid_shape(2, 2)
  with pytest.raises(ConfigError, match="--prompt: give --prompt or --class, not both"):
    diffusion.generate(_config(encoder_workdir), None, workdir,
                     SampleRequest(prompt="a 7", class_label=7))
