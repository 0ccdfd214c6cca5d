"""Later stages start from earlier ones through the real loop: LoRA adapters over a frozen base and
distillation from a frozen teacher. The frozen part never changes, gets no optimizer state and
never enters a checkpoint; a resume rebuilds it from its source."""
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import families, interop, parallel
from gen_jax.config import ConfigError
from gen_jax.families import llm
from gen_jax.lora import is_adapter
from gen_jax.models import Transformer, TransformerConfig
from gen_jax.sample import SampleRequest
from gen_jax import partition
from gen_jax.train import abstract_train_state, read_metrics, train_and_evaluate
from gen_jax.train.workdir import load_workdir_params
from tests import reference
from tests.conftest import checkpoint_tree, tiny_config


# One worker runs this module and trains the base once (a session fixture: once per worker).
pytestmark = pytest.mark.xdist_group("llm_stages")


@pytest.fixture(scope="session")
def base_workdir(tmp_path_factory):
  """A tiny pretrained LM: the LoRA base and the distillation teacher."""
  workdir = str(tmp_path_factory.mktemp("base"))
  metrics = train_and_evaluate(tiny_config(**{"train.num_steps": 4, "train.eval_every": 4,
                                              "checkpoint.every_steps": 4}), workdir)
  return workdir, metrics


def _lora_config(base: str, **overrides):
  return tiny_config("configs/llm/lora.py", **{
      "init.source": f"workdir:{base}", "model.lora_targets": "query,value,wo,lm_head",
      "train.num_steps": 4, "train.eval_every": 4, "checkpoint.every_steps": 2, **overrides})


def test_lora_trains_only_the_adapters_saves_them_alone_and_merges(base_workdir, tmp_path):
  base, _ = base_workdir
  workdir = str(tmp_path / "lora")
  config = _lora_config(base)
  train_and_evaluate(config, workdir)

  _, base_params = load_workdir_params(base)
  _, params = load_workdir_params(workdir)
  flat, base_flat = partition.flatten(params), partition.flatten(base_params)
  adapters = {p: v for p, v in flat.items() if is_adapter(p)}
  assert set(flat) == set(base_flat) | set(adapters)
  assert {p[-2] for p in adapters} == {"query", "value", "wo", "lm_head"}
  for path, value in base_flat.items():  # The base is exactly the earlier stage's weights.
    np.testing.assert_array_equal(np.asarray(flat[path]), np.asarray(value), err_msg=str(path))
  for path, value in adapters.items():  # B starts at zero; training moved every one.
    if path[-1] == "lora_b":
      assert np.abs(np.asarray(value)).max() > 1e-4, path

  # Only adapters (and their Adam moments) are on disk; the optimizer covers nothing else.
  saved = checkpoint_tree(workdir, 4)
  saved_params = {p[1:] for p in saved if p[0] == "params"}
  assert saved_params == set(adapters)
  moments = [p for p in saved if p[0] == "opt_state" and len(saved[p]) > 0]
  assert moments and all(is_adapter(p) for p in moments)
  layout = abstract_train_state(llm.param_spec(config), config, parallel.make_mesh(config.mesh))
  assert set(partition.flatten(layout.abstract.params)) == set(adapters)
  assert set(partition.flatten(layout.abstract_frozen)) == set(base_flat)

  # Merged into the base, the model equals base + adapters, and is a plain model.
  merged_config, merged = llm.inference_params(config, params)
  assert merged_config.lora_rank == 0 and not any(map(is_adapter, partition.flatten(merged)))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 512, (2, 16)))
  adapted_logits = Transformer(TransformerConfig.from_config(config.model)).apply(
      {"params": params}, tokens)
  merged_logits = Transformer(merged_config).apply({"params": merged}, tokens)
  np.testing.assert_allclose(merged_logits, adapted_logits, atol=2e-5, rtol=2e-5)
  base_logits = Transformer(merged_config).apply({"params": base_params}, tokens)
  assert np.abs(np.asarray(merged_logits - base_logits)).max() > 1e-3

  # Exported, the merged model is a plain LLaMA checkpoint with the same logits.
  llm.export_workdir(workdir, str(tmp_path / "hf"))
  exported = interop.load_hf(str(tmp_path / "hf"))
  exported_logits = Transformer(exported.config).apply({"params": exported.params}, tokens)
  np.testing.assert_allclose(exported_logits, adapted_logits, atol=2e-5, rtol=2e-5)

  # A next stage can start from the adapted model: its pretrained values are the merged weights.
  next_stage = tiny_config(**{"init.source": f"workdir:{workdir}"})
  values = llm.param_spec(next_stage).pretrained()
  for path, value in partition.flatten(merged).items():
    np.testing.assert_allclose(values[path], np.asarray(value), rtol=1e-6, err_msg=str(path))


def test_lora_resume_rebuilds_the_frozen_base_and_reproduces_the_run(base_workdir, tmp_path):
  base, _ = base_workdir
  workdir = str(tmp_path / "lora")
  config = _lora_config(base, **{"model.lora_targets": "query,key"})
  train_and_evaluate(config, workdir)
  _, straight = load_workdir_params(workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))  # As if killed after step 2's save.
  train_and_evaluate(config, workdir)
  _, resumed = load_workdir_params(workdir)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               resumed, straight)


def test_init_source_must_match_the_model_shape_and_exist(base_workdir, tmp_path):
  base, _ = base_workdir
  with pytest.raises(ConfigError, match=r"model.embed_dim: 32, but init.source has 64"):
    families.get("llm").validate(_lora_config(base, **{"model.embed_dim": 32}))
  with pytest.raises(ConfigError, match=r"init.source: 'ckpt:/x' is not KIND:PATH"):
    families.get("llm").validate(_lora_config(base, **{"init.source": "ckpt:/x"}))
  with pytest.raises(ConfigError, match=r"init.source: '/nonexistent' does not exist"):
    families.get("llm").validate(_lora_config(base, **{"init.source": "workdir:/nonexistent"}))
  with pytest.raises(ConfigError, match=r"init.source: .* has no config.json: not a training"):
    os.makedirs(tmp_path / "empty")
    families.get("llm").validate(tiny_config(**{"init.source": f"workdir:{tmp_path}/empty"}))


def _distill_config(teacher: str, **overrides):
  """A smaller student of the tiny base, on the same text, windows and held-out batches."""
  return tiny_config(**{
      "distill.teacher": f"workdir:{teacher}", "model.embed_dim": 32, "model.num_layers": 1,
      "model.num_heads": 2, "model.num_kv_heads": 1, "model.mlp_dim": 64,
      "train.num_steps": 8, "train.log_every": 1, "train.eval_every": 8,
      "checkpoint.every_steps": 8, **overrides})


def test_distillation_loss_equals_numpy_kl_and_cross_entropy(base_workdir, tmp_path):
  base, _ = base_workdir
  config = _distill_config(base, **{"distill.temperature": 2.0, "distill.kl_weight": 0.7})
  task = llm.build_task(config, str(tmp_path))
  params = jax.tree.map(lambda x: x.unbox(), task.params.init(jax.random.key(0)),
                        is_leaf=lambda x: hasattr(x, "unbox"))
  params = partition.unflatten({**partition.flatten(params), **task.params.pretrained()})
  batch = next(iter(task.train_data))
  loss, sums = task.loss_fn(params, batch, None)

  student_config = TransformerConfig.from_config(config.model)
  teacher_config = TransformerConfig.from_config(tiny_config().model)
  host = jax.device_get(params)
  kl = ce = teacher_ce = 0.0
  for tokens, seg, pos in zip(batch["tokens"], batch["segment_ids"], batch["positions"]):
    s = reference.transformer_logits(host["student"], tokens[:-1], pos[:-1], seg[:-1],
                                     student_config)
    t = reference.transformer_logits(host["teacher"], tokens[:-1], pos[:-1], seg[:-1],
                                     teacher_config)
    for i in range(len(tokens) - 1):
      if seg[i + 1] != 0 and seg[i + 1] == seg[i]:
        p, log_q = reference.log_softmax(t[i] / 2.0), reference.log_softmax(s[i] / 2.0)
        kl += float((np.exp(p) * (p - log_q)).sum())
        ce -= reference.log_softmax(s[i])[tokens[i + 1]]
        teacher_ce -= reference.log_softmax(t[i])[tokens[i + 1]]
  np.testing.assert_allclose(float(sums["distill_kl"]), kl, rtol=1e-4)
  np.testing.assert_allclose(float(sums["lm_loss"]), ce, rtol=1e-4)
  np.testing.assert_allclose(float(sums["teacher_lm_loss"]), teacher_ce, rtol=1e-4)
  np.testing.assert_allclose(float(loss), 0.7 * 4.0 * kl + 0.3 * ce, rtol=1e-4)


def test_distillation_trains_the_student_against_the_frozen_teacher(base_workdir, tmp_path):
  base, base_metrics = base_workdir
  workdir = str(tmp_path / "student")
  config = _distill_config(base)
  metrics = train_and_evaluate(config, workdir)
  # The teacher scored on the held-out text is the base run itself.
  np.testing.assert_allclose(metrics["eval/teacher_bits_per_byte"],
                             base_metrics["eval/bits_per_byte"], rtol=1e-5)
  kl = [r["train/distill_kl"] for r in read_metrics(workdir) if "train/distill_kl" in r]
  assert len(kl) == 8 and kl[-1] < 0.9 * kl[0], kl
  assert math.isclose(metrics["train/loss"], metrics["train/distill_kl"], rel_tol=1e-6)

  saved = checkpoint_tree(workdir, 8)
  assert {p[1] for p in saved if p[0] == "params"} == {"student"}
  _, params = load_workdir_params(workdir)
  _, base_params = load_workdir_params(base)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params["teacher"]),
               jax.device_get(base_params))
  student_config, student = llm.inference_params(config, params)
  assert student_config.embed_dim == 32 and student is params["student"]

  # The student drafts for its teacher: greedy speculative output is the teacher's greedy output.
  base_config = tiny_config()
  prompt = dict(prompt="The for statement", max_new_tokens=12)
  plain = llm.sample(base_config, base_params, base, SampleRequest(**prompt))
  drafted = llm.sample(base_config, base_params, base,
                       SampleRequest(**prompt, draft_workdir=workdir, draft_tokens=3))
  assert drafted == plain and len(plain) > 0


def test_qlora_trains_adapters_over_the_int8_base_and_merges_into_its_dequantized_weights(
    base_workdir, tmp_path):
  base, _ = base_workdir
  workdir = str(tmp_path / "qlora")
  config = _lora_config(base, **{"model.weight_bits": 8, "model.weight_group_size": 16,
                                 "train.num_steps": 2, "train.eval_every": 2})
  metrics = train_and_evaluate(config, workdir)
  assert math.isfinite(metrics["eval/loss"])

  _, base_params = load_workdir_params(base)
  _, params = load_workdir_params(workdir)
  flat = partition.flatten(params)
  # The frozen base is the earlier stage's kernels rounded to int8, one scale per 16 inputs:
  # within half a step of them, with codes in [-127, 127] (checked against numpy, not quant code).
  kernel = np.asarray(partition.flatten(base_params)[("layers", "attention", "query", "kernel")])
  qweight = np.asarray(flat[("layers", "attention", "query", "qweight")])
  scale = np.asarray(flat[("layers", "attention", "query", "scale")], np.float32)
  w = kernel.reshape(kernel.shape[0], -1, kernel.shape[-2] * kernel.shape[-1])  # [l, in, out]
  groups = w.reshape(w.shape[0], -1, 16, w.shape[-1])  # [l, in / 16, 16, out]
  expected_scale = np.abs(groups).max(axis=2) / 127
  np.testing.assert_allclose(scale.reshape(expected_scale.shape), expected_scale, rtol=1e-6)
  codes = qweight.reshape(groups.shape).astype(np.float32)
  assert np.abs(codes).max() <= 127
  np.testing.assert_allclose(codes * expected_scale[:, :, None], groups,
                             atol=float(expected_scale.max()) / 2 + 1e-7)
  # Only the adapters trained, and only they are checkpointed.
  saved = checkpoint_tree(workdir, 2)
  assert {p[1:] for p in saved if p[0] == "params"} == {p for p in flat if is_adapter(p)}
  assert np.abs(np.asarray(flat[("layers", "attention", "query", "lora_b")])).max() > 1e-4

  # Sampling and export take the plain float model: dequantized base + adapters, same logits.
  model_config, merged = llm.inference_params(config, params)
  assert model_config.weight_bits == 0 and model_config.lora_rank == 0
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 512, (2, 16)))
  qlora_logits = Transformer(TransformerConfig.from_config(config.model)).apply(
      {"params": params}, tokens)
  merged_logits = Transformer(model_config).apply({"params": merged}, tokens)
  np.testing.assert_allclose(merged_logits, qlora_logits, atol=5e-5, rtol=5e-5)

  with pytest.raises(ConfigError, match=r"init.source: is empty: model.weight_bits=8"):
    families.get("llm").validate(_lora_config(base, **{"model.weight_bits": 8,
                                                       "init.source": ""}))
  with pytest.raises(ConfigError, match=r"model.weight_bits: training updates float kernels"):
    families.get("llm").validate(_lora_config(base, **{"model.weight_bits": 8,
                                                       "model.lora_rank": 0}))
