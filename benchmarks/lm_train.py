"""LM training throughput and model FLOPs utilization (MFU) for a preset, on the visible devices.

  python benchmarks/lm_train.py --config=configs/llm/pretrain.py:1b --batch_size=16   # one GPU
  python benchmarks/lm_train.py --config=configs/llm/pretrain.py:small                # a CPU

Runs the library's real train step (the family's loss, `abstract_train_state`, `make_train_step`,
the config's mesh, jit with donation) on random tokens of full length, so the data pipeline is not
measured. Model FLOPs are counted the standard way (PaLM, Chowdhery et al. 2022, appendix B):
6 x N per token for the weight matmuls forward and backward, N = the parameters other than the input
embedding (a lookup), plus 12 x layers x heads x head_dim x length per token for the attention
scores and values (no discount for the causal mask). MFU = model FLOPs per second / (devices x
peak). Rematerialization's extra forward pass is not counted, as MFU requires. The last lines are a
markdown table for docs/BENCHMARKS.md.
"""
import datetime
import math
import os
import platform
import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags

from gen_jax import families, parallel
from gen_jax.config import load_config_file
from gen_jax.config.presets import set_fields
from gen_jax.train import abstract_train_state, make_train_step, rng_for, validate
from gen_jax.train.state import learning_rate_schedule
import trace_summary  # benchmarks/, the script's own directory.

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFIG = flags.DEFINE_string("config", "configs/llm/pretrain.py:1b", "Config file:preset.")
_SET = flags.DEFINE_multi_string("set", [], "Overrides, e.g. --set=model.remat=dots.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Global batch (sequences); 0: the preset's.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_TRACE_DIR = flags.DEFINE_string("trace_dir", None, "Also profile 2 steps after the timed ones "
                                 "into DIR and print trace_summary.py's account per step (the "
                                 "kernels that took the time, the GPU's busy fraction).")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak bf16 TFLOP/s per device; 0: from the table.")

# Dense bf16 peak per chip from the vendors' data sheets (no sparsity).
PEAK_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("TPU v6", 918.0),
               ("TPU v5 lite", 197.0), ("TPU v5e", 197.0), ("TPU v5", 459.0), ("TPU v4", 275.0))


def _peak_tflops(device) -> float | None:
  if _PEAK.value:
    return _PEAK.value
  return next((peak for name, peak in PEAK_TFLOPS if name.lower() in device.device_kind.lower()),
              None)


def model_flops_per_token(config, params) -> float:
  """6 N + 12 L n h T (PaLM's count), N excluding the input embedding table."""
  m = config.model
  total = sum(x.size for x in jax.tree.leaves(params))
  embedding = 0 if m.tie_embeddings else m.vocab_size * m.embed_dim  # A tied table is the head too.
  return 6 * (total - embedding) + 12 * m.num_layers * m.num_heads * m.head_dim * m.max_seq_len


def _random_batch(config, shapes, mesh):
  """Full-length single-document windows of random tokens, placed like real batches."""
  b, length = shapes["tokens"].shape
  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(2, config.model.vocab_size, (b, length), dtype=np.int32),
           "segment_ids": np.ones((b, length), np.int32),
           "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (b, length)).copy(),
           "loss_mask": np.ones((b, length), shapes["loss_mask"].dtype)}
  missing = set(shapes) - set(batch)
  if missing:
    raise ValueError(f"the llm batch now also has {sorted(missing)}; fill them here")
  return parallel.shard_batch(batch, mesh)


def main(argv):
  del argv
  path, _, preset = _CONFIG.value.partition(":")
  config = load_config_file(f"{os.path.join(REPO_ROOT, path)}:{preset}")
  set_fields(config, _SET.value)
  if _BATCH.value:
    config.train.batch_size = _BATCH.value
  validate(config)
  mesh = parallel.make_mesh(config.mesh)
  family = families.get(config.family)
  loss_fn, shapes = family.dry_run_inputs(config)
  layout = abstract_train_state(family.param_spec(config), config, mesh)
  step_fn = make_train_step(loss_fn, layout.tx, learning_rate_schedule(config),
                            config.train.grad_accum_steps)
  rules = parallel.rules_tuple(config.logical_axis_rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state, frozen = layout.create(rng_for(config.seed, "init"))
    batch = _random_batch(config, shapes, mesh)
    step_fn = jax.jit(step_fn, donate_argnums=0,
                      out_shardings=(jax.tree.map(lambda x: x.sharding, layout.abstract), None))
    rng = rng_for(config.seed, "train")
    start = time.perf_counter()
    state, metrics = step_fn(state, frozen, batch, rng)
    jax.block_until_ready(metrics)
    compile_sec = time.perf_counter() - start
    for _ in range(_WARMUP.value):
      state, metrics = step_fn(state, frozen, batch, rng)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
      state, metrics = step_fn(state, frozen, batch, rng)
    jax.block_until_ready(metrics)
    step_sec = (time.perf_counter() - start) / _STEPS.value
    if _TRACE_DIR.value:
      with trace_summary.traced(_TRACE_DIR.value):
        for _ in range(2):
          state, metrics = step_fn(state, frozen, batch, rng)
        jax.block_until_ready(metrics)
      print(trace_summary.summarize(_TRACE_DIR.value, per=2, per_name="step", top=15), flush=True)

  tokens_per_step = config.train.batch_size * config.model.max_seq_len
  tokens_per_sec = tokens_per_step / step_sec
  flops_per_token = model_flops_per_token(config, state.params)
  achieved = flops_per_token * tokens_per_sec / mesh.size / 1e12  # TFLOP/s per device.
  device = jax.devices()[0]
  peak = _peak_tflops(device)
  mfu = f"{100 * achieved / peak:.1f}%" if peak else "n/a (no peak for this device)"
  params = sum(x.size for x in jax.tree.leaves(state.params))
  print(f"{datetime.date.today()} {mesh.size} x {device.device_kind} ({device.platform}), "
        f"jax {jax.__version__}, {platform.processor() or platform.machine()}")
  print(f"config {_CONFIG.value} {' '.join(_SET.value)} batch {config.train.batch_size} x "
        f"{config.model.max_seq_len}, mesh {dict(mesh.shape)}; compile + first step "
        f"{compile_sec:.1f} s; final loss {float(metrics['loss']):.3f}")
  header = ["preset", "params", "devices", "tokens/step", "step s", "tokens/s",
            "model TFLOP/s/device", "MFU"]
  row = [_CONFIG.value.rsplit(":", 1)[-1], f"{params / 1e6:.1f}M", str(mesh.size),
         f"{tokens_per_step:,}", f"{step_sec:.3f}", f"{tokens_per_sec:,.0f}", f"{achieved:.3g}", mfu]
  print("\n| " + " | ".join(header) + " |\n|" + " ---: |" * len(header))
  print("| " + " | ".join(row) + " |")
  if not math.isfinite(float(metrics["loss"])):
    raise SystemExit("the loss is not finite: the measured step is broken")


if __name__ == "__main__":
  app.run(main)
