"""The llm family's loss on a real packed batch equals a numpy computation from the same params."""
import math

import jax
import numpy as np
import pytest

from gen_jax import families
from gen_jax.models import TransformerConfig
from gen_jax.train.task import WEIGHT
from tests import reference
from tests.conftest import tiny_config


def test_task_loss_and_bits_per_byte_equal_numpy(tmp_path):
  config = tiny_config()
  task = families.get("llm").build_task(config, str(tmp_path))
  params = jax.tree.map(lambda x: x.unbox(), task.params.init(jax.random.key(0)),
                        is_leaf=lambda x: hasattr(x, "unbox"))
  batch = next(iter(task.train_data))
  loss_sum, sums = task.loss_fn(params, batch, jax.random.key(0))

  from gen_jax.data import Tokenizer
  tok = Tokenizer.load(str(tmp_path))
  cfg = TransformerConfig.from_config(config.model)
  host_params = jax.device_get(params)
  total, count, total_bytes = 0.0, 0, 0
  for tokens, seg, pos in zip(batch["tokens"], batch["segment_ids"], batch["positions"]):
    logp = reference.log_softmax(reference.transformer_logits(host_params, tokens[:-1], pos[:-1], seg[:-1], cfg))
    for t in range(len(tokens) - 1):
      if seg[t + 1] != 0 and seg[t + 1] == seg[t]:  # same document, not padding
        total -= logp[t, tokens[t + 1]]
        count += 1
        # Bytes the target token stands for, from its decoded text (0 for end-of-text).
        if tokens[t + 1] not in (tok.eos_id, tok.pad_id):
          total_bytes += len(tok.decode([int(tokens[t + 1])]).encode("utf-8"))
  assert count > batch["tokens"].shape[0] * (batch["tokens"].shape[1] - 1) // 2
  np.testing.assert_allclose(float(loss_sum), total, rtol=1e-4)
  assert float(sums[WEIGHT]) == count
  # Multi-byte characters may be split across tokens, so compare bytes on the whole batch.
  assert abs(float(sums["bytes_per_token"]) - total_bytes) <= 0.01 * total_bytes
  bpb = task.eval_metrics({"loss_sum": total, "bytes_per_token": total_bytes})["eval/bits_per_byte"]
  np.testing.assert_allclose(bpb, total / math.log(2) / total_bytes, rtol=1e-9)


def test_moe_trains_end_to_end_and_reports_router_metrics(tmp_path):
  """The loss is the next-token loss plus the weighted load-balancing loss; drops are reported."""
  config = tiny_config(**{"model.num_experts": 4, "model.experts_per_token": 2,
                          "model.expert_capacity_factor": 1.0, "train.num_steps": 3,
                          "model.expert_group_size": 24,  # Routing windows of 24 of 64 tokens.
                          "train.log_every": 1, "objective.router_z_loss_weight": 1e-3})
  from gen_jax.train import train_and_evaluate
  metrics = train_and_evaluate(config, str(tmp_path))
  for name in ("loss", "lm_loss", "router_aux_loss", "router_z_loss", "dropped_token_fraction"):
    assert np.isfinite(metrics[f"train/{name}"]) and np.isfinite(metrics[f"eval/{name}"]), name
  for split in ("train", "eval"):
    np.testing.assert_allclose(
        metrics[f"{split}/loss"], metrics[f"{split}/lm_loss"] +
        0.01 * metrics[f"{split}/router_aux_loss"] + 1e-3 * metrics[f"{split}/router_z_loss"],
        rtol=1e-5)
  # Top-2 of 4 experts: about 1 while routing is balanced, 2 if two experts took every token.
  assert 0.9 < metrics["train/router_aux_loss"] < 2.0
  # A capacity factor of 1 leaves no room for imbalance, so some assignments drop.
  assert 0 < metrics["train/dropped_token_fraction"] < 0.5
  # Bits per byte is the language model's alone, without the auxiliary losses.
  np.testing.assert_allclose(
      metrics["eval/bits_per_byte"],
      metrics["eval/lm_loss"] / math.log(2) / metrics["eval/bytes_per_token"], rtol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"model.tie_embeddings": True},
                                       {"model.num_experts": 4}])
def test_logit_chunks_give_the_same_loss_and_gradients(tmp_path, overrides):
  """objective.logit_chunks=4: the output layer (the lm_head, or the tied embedding) and the loss
  run over slices of the positions; the loss sums and every parameter's gradient are unchanged."""
  results = []
  for chunks in (0, 4):
    config = tiny_config(**overrides, **{"objective.logit_chunks": chunks})
    task = families.get("llm").build_task(config, str(tmp_path / str(chunks)))
    params = jax.tree.map(lambda x: x.unbox(), task.params.init(jax.random.key(0)),
                          is_leaf=lambda x: hasattr(x, "unbox"))
    batch = next(iter(task.train_data))
    grad_fn = jax.jit(jax.value_and_grad(task.loss_fn, has_aux=True))
    results.append(grad_fn(params, batch, jax.random.key(0)))
  ((loss0, sums0), grads0), ((loss4, sums4), grads4) = results
  np.testing.assert_allclose(loss4, loss0, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), sums4, sums0)
  # Per counted token, as the train step divides them (sums of ~500 tokens' terms otherwise).
  per_token = lambda g: jax.tree.map(lambda x: x / sums0[WEIGHT], g)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               per_token(grads4), per_token(grads0))
