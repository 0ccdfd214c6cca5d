"""The entry points end to end: train and sample both families, resume, preemption, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT, run_cli

LLM = "--config=configs/llm/pretrain.py:tiny"
VAE = "--config=configs/vae/digits.py:tiny"


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _train_losses(workdir):
  return {r["step"]: r["train/loss"] for r in _metrics(workdir) if "train/loss" in r}


def test_llm_trains_writes_its_workdir_and_samples(tmp_path, capsys):
  workdir = str(tmp_path / "lm")
  result = run_cli("gen_jax.main", LLM, f"--workdir={workdir}", "--config.train.num_steps=30")
  assert result.returncode == 0, result.stderr[-3000:]
  files = set(os.listdir(workdir))
  assert {"config.json", "tokenizer.json", "metrics.jsonl", "checkpoints", "tensorboard"} <= files
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20", "30"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tensorboard")))
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["train"]["num_steps"] == 30
  records = _metrics(workdir)
  train = [r for r in records if "train/loss" in r]
  evals = [r for r in records if "eval/loss" in r]
  assert [r["step"] for r in evals] == [10, 20, 30]
  assert all("train/tokens_per_sec" in r for r in train[1:])
  assert evals[-1]["eval/loss"] < train[0]["train/loss"] - 0.5  # It learned.
  assert 0 < evals[-1]["eval/bits_per_byte"] < 8

  sample = run_cli("gen_jax.sample", f"--workdir={workdir}", "--prompt=The for statement",
                   "--max_new_tokens=12")
  assert sample.returncode == 0, sample.stderr[-3000:]
  assert sample.stdout.startswith("The for statement")
  bad = run_cli("gen_jax.sample", f"--workdir={workdir}", "--prompt=x", "--top_p=0")
  assert bad.returncode == 2 and "top_p must be" in bad.stderr and "Traceback" not in bad.stderr

  # The rest of the flags in-process (one subprocess each would cost a JAX start-up apiece):
  # gen_jax.sample's main builds exactly this request from them and prints what sample() prints.
  from gen_jax.sample import SampleRequest, sample as sample_workdir

  def sampled(**flags):
    sample_workdir(workdir, SampleRequest(prompt="The for statement", max_new_tokens=12, **flags))
    return capsys.readouterr().out

  capsys.readouterr()
  hot_flags = dict(temperature=1.0, seed=3, top_k=20, top_p=0.9, min_p=0.05,
                   repetition_penalty=1.2)
  hot = sampled(**hot_flags)
  assert hot.startswith("The for statement"), hot
  # A stop string taken from the middle of the sampled continuation: the same seed makes the same
  # tokens up to it, and the text returned ends right before it.
  continuation = hot[len("The for statement"):].rstrip("\n")
  assert len(continuation) >= 4, continuation
  stop_text = continuation[len(continuation) // 2:len(continuation) // 2 + 2]
  stopped = sampled(**hot_flags, stop=(stop_text,))
  assert stopped.rstrip("\n") == "The for statement" + continuation[:continuation.find(stop_text)]
  beams = sampled(beam_width=3, num_return=2, length_penalty=0.5)
  blocks = beams.split("--- beam ")[1:]  # "1: score S, log p L, ...\n<text>"
  scores = [float(block.split()[2].rstrip(",")) for block in blocks]
  assert len(blocks) == 2 and scores[0] >= scores[1], beams
  assert all(block.split("\n", 1)[1].startswith("The for statement") for block in blocks)
  with pytest.raises(ValueError, match="does not use --temperature"):
    sampled(beam_width=2, temperature=0.7)
  # Quantized before sampling: int4 GPTQ calibrated on a text file; its flags checked.
  quantized = sampled(weight_bits=4, weight_group_size=16, quant_method="gptq",
                      calibration_file=str(REPO_ROOT / "README.md"))
  assert quantized.startswith("The for statement"), quantized
  # What it sampled from: int4 codes (two per int8) and one scale per 16 inputs, not float kernels.
  from gen_jax.data import Tokenizer
  from gen_jax.families import llm, llm_text
  from gen_jax.train.workdir import load_workdir_params
  config, params = load_workdir_params(workdir)
  float_config, float_params = llm.inference_params(config, params)
  int_config, int_params = llm_text.quantized_for_sampling(
      float_config, float_params, Tokenizer.load(workdir),
      SampleRequest(weight_bits=4, weight_group_size=16, quant_method="gptq",
                    calibration_file=str(REPO_ROOT / "README.md")))
  query = int_params["layers"]["attention"]["query"]
  assert int_config.weight_bits == 4 and "kernel" not in query
  assert query["qweight"].dtype == np.int8 and query["qweight"].shape[-2:] == (8, 64)
  # The Pallas kernel that dequantizes in registers (interpreted here) samples what XLA's path does.
  assert sampled(weight_bits=8, weight_matmul_impl="pallas") == sampled(weight_bits=8)
  with pytest.raises(ValueError, match="--weight_matmul_impl: .* set --weight_bits"):
    sampled(weight_matmul_impl="pallas")
  # Each layer's weights apart (no layer loop), quantized or not, or in beam search: the same
  # text as the stack's.
  assert sampled(scan_layers=False) == sampled()
  assert sampled(weight_bits=8, scan_layers=False) == sampled(weight_bits=8)
  separate_beams = sampled(beam_width=3, num_return=2, length_penalty=0.5, scan_layers=False)
  assert ([block.split("\n", 1)[1] for block in separate_beams.split("--- beam ")[1:]] ==
          [block.split("\n", 1)[1] for block in blocks])
  with pytest.raises(ValueError, match="--calibration_file: --quant_method=awq calibrates"):
    sampled(weight_bits=4, quant_method="awq")
  with pytest.raises(ValueError, match="--quant_method/--calibration_file: .* set --weight_bits"):
    sampled(quant_method="gptq")
  with pytest.raises(ValueError, match="--weight_bits/--weight_group_size/--quant_method: "):
    sampled(weight_bits=4, weight_group_size=48)
  with pytest.raises(ValueError, match=r"the prompt is .*model.max_seq_len\) is 64"):
    sample_workdir(workdir, SampleRequest(prompt="word " * 200))


def test_vae_trains_writes_png_grids_and_samples(tmp_path):
  workdir = str(tmp_path / "vae")
  result = run_cli("gen_jax.main", VAE, f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  evals = [r for r in _metrics(workdir) if "eval/negative_elbo" in r]
  assert [r["step"] for r in evals] == [15, 30]
  assert evals[-1]["eval/negative_elbo"] < evals[0]["eval/negative_elbo"]
  np.testing.assert_allclose(evals[-1]["eval/bits_per_dim"],
                             evals[-1]["eval/negative_elbo"] / (64 * np.log(2)), rtol=1e-6)
  images = sorted(os.listdir(os.path.join(workdir, "images")))
  assert images == ["reconstructions_000015.png", "reconstructions_000030.png",
                    "samples_000015.png", "samples_000030.png"]
  grid = np.asarray(Image.open(os.path.join(workdir, "images", "samples_000030.png")))
  assert grid.ndim == 2 and grid.std() > 5  # A real grid of 16 digits, not a blank image.
  from gen_jax.config import ConfigError
  from gen_jax.sample import SampleRequest, sample as sample_workdir
  # In-process: the llm test above runs the sample CLI itself.
  path = sample_workdir(workdir, SampleRequest(num_samples=9))
  assert path == os.path.join(workdir, "samples.png")
  assert np.asarray(Image.open(path)).std() > 5
  # A workdir saved by an earlier gen_jax, before fields it now has existed, still samples (the
  # missing ones take their defaults) and resumes (its run equals one with the defaults).
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  del saved["train"]["ema_decay"], saved["sample"]
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(saved, f)
  assert np.asarray(Image.open(sample_workdir(workdir, SampleRequest(num_samples=9)))).std() > 5
  resumed = run_cli("gen_jax.main", VAE, f"--workdir={workdir}", "--config.train.num_steps=31")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "take their defaults: sample, train.ema_decay" in resumed.stderr
  with pytest.raises(ConfigError, match="--prompt: .* holds a vae model that is not text-cond"):
    sample_workdir(workdir, SampleRequest(prompt="a shoe"))
  with pytest.raises(ConfigError, match="--weight_bits: .* holds a vae model, not a language"):
    sample_workdir(workdir, SampleRequest(weight_bits=8))
  with pytest.raises(ConfigError, match="--noscan_layers: .* holds a vae model, not a language"):
    sample_workdir(workdir, SampleRequest(scan_layers=False))


def test_sigterm_saves_and_resume_reproduces_the_uninterrupted_losses(tmp_path):
  args = [LLM, "--config.train.num_steps=120", "--config.train.log_every=1",
          "--config.checkpoint.every_steps=50", "--config.train.eval_every=1000"]
  straight = str(tmp_path / "straight")
  assert run_cli("gen_jax.main", *args, f"--workdir={straight}").returncode == 0

  interrupted = str(tmp_path / "interrupted")
  proc = subprocess.Popen([sys.executable, "-m", "gen_jax.main", *args, f"--workdir={interrupted}"],
                          cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics_path = os.path.join(interrupted, "metrics.jsonl")
  deadline = time.time() + 300
  while time.time() < deadline:
    if os.path.exists(metrics_path) and len(open(metrics_path).readlines()) >= 8:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  stopped = int((out + err).split("SIGTERM: saved a checkpoint at step ")[1].split(";")[0])
  assert 8 <= stopped < 120
  assert str(stopped) in os.listdir(os.path.join(interrupted, "checkpoints"))

  resumed = run_cli("gen_jax.main", *args, f"--workdir={interrupted}")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resumed from {interrupted}/checkpoints/{stopped}" in resumed.stdout
  expected, got = _train_losses(straight), _train_losses(interrupted)
  assert sorted(got) == sorted(expected) == list(range(1, 121))
  np.testing.assert_allclose([got[s] for s in range(1, 121)], [expected[s] for s in range(1, 121)],
                             rtol=1e-6)


def test_resume_with_a_changed_model_shape_is_refused(tmp_path):
  workdir = str(tmp_path / "lm")
  assert run_cli("gen_jax.main", LLM, f"--workdir={workdir}", "--config.train.num_steps=2").returncode == 0
  changed = run_cli("gen_jax.main", LLM, f"--workdir={workdir}", "--config.model.num_layers=3")
  assert changed.returncode == 2
  assert "Config error: model.num_layers: the workdir holds a run with 2 but this run has 3" in changed.stderr
  assert "Traceback" not in changed.stderr
  # A different tokenizer size is a different model too.
  changed = run_cli("gen_jax.main", LLM, f"--workdir={workdir}", "--config.model.vocab_size=600")
  assert "model.vocab_size: the workdir holds a run with 512 but this run has 600" in changed.stderr


@pytest.mark.parametrize("flag,message", [
    ("--config.model.num_layer=3", "Config error: model.num_layer: no such field; fields of model are ['attention_impl'"),
    ("--config.model.num_layers=four", "flag --config.model.num_layers=four: invalid literal for int()"),
    ("--config=configs/llm/pretrain.py:huge", "config preset: unknown preset 'huge'; choose one of ['125m', '1b', '7b', 'small', 'tiny']"),
    ("--config.model.num_heads=3", "Config error: model.num_heads: 3 heads do not divide model.embed_dim=64"),
    ("--config.data.source=/no/such/corpus.txt", "Config error: data.source: no such file or folder: '/no/such/corpus.txt'"),
    ("--config.train.batch_size=4096", "Config error: data.source: 'pydoc' gives"),
])
def test_cli_bad_input_fails_with_a_message_naming_it(flag, message, tmp_path):
  result = run_cli("gen_jax.main", LLM, f"--workdir={tmp_path / 'w'}", flag)
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args,message", [
    ([], "Error: --workdir/--gguf/--hf_dir: none given; give exactly one of --workdir"),
    (["--workdir=w", "--gguf=m.gguf"], "Error: --workdir, --gguf: 2 given; give exactly one of"),
    (["--gguf=m.gguf", "--system=Be brief."], "Error: --system: a system instruction needs --chat"),
    (["--hf_dir=/no/such/dir"], "Error: --hf_dir: /no/such/dir: has no config.json"),
])
def test_sample_model_flags_fail_with_a_message_naming_the_flag(args, message):
  result = run_cli("gen_jax.sample", "--prompt=Hi", *args)
  assert result.returncode == 2 and message in result.stderr, result.stderr[-3000:]
  assert "Traceback" not in result.stderr


def test_export_of_a_missing_workdir_fails_naming_the_flag(tmp_path):
  result = run_cli("gen_jax.export", f"--workdir={tmp_path}", f"--hf_dir={tmp_path / 'hf'}")
  assert result.returncode == 2, result.stderr[-3000:]
  assert f"Error: --workdir: '{tmp_path}' has no config.json: not a training workdir" in result.stderr
  assert "Traceback" not in result.stderr
