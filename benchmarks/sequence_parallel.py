"""Sequence-parallel attention: all-gather vs ring vs striped ring, memory and time per device.

  python benchmarks/sequence_parallel.py                         # a CPU: 8 fake devices
  python benchmarks/sequence_parallel.py --length=131072 --impl=pallas --dtype=bfloat16   # a slice

For each split N of the length over a `sequence` mesh axis (the first N devices) and each mode of
`ops.attention(..., sequence_parallel=...)`, compiles causal attention forward + backward on
[batch, length, heads, head_dim] queries with grouped kv heads, reports XLA's temporary bytes per
device (what the mode costs in memory besides inputs and outputs) and times it (the median of
--repeats calls after one warm-up). striped_ring gets its inputs in stripe order (ops.to_stripes),
as the model gives them. On a CPU the devices are fake (XLA_FLAGS
--xla_force_host_platform_device_count, set here before jax loads) and share its cores, so only
the memory column means anything there; the times need a machine with N real devices. The last
lines are a markdown table for docs/BENCHMARKS.md.
"""
import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()

import datetime  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402

from gen_jax import ops, parallel  # noqa: E402
from gen_jax.config import load_config_file  # noqa: E402
from gen_jax.config.common import DEFAULT_LOGICAL_AXIS_RULES  # noqa: E402
from gen_jax.config.presets import set_field  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_LENGTH = flags.DEFINE_integer("length", 8192, "Sequence length (every split must divide it).")
_BATCH = flags.DEFINE_integer("batch", 1, "Sequences.")
_HEADS = flags.DEFINE_integer("heads", 8, "Query heads.")
_KV_HEADS = flags.DEFINE_integer("kv_heads", 2, "Key/value heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Head dimension.")
_SPLITS = flags.DEFINE_list("splits", ["2", "4", "8"], "Devices along the length.")
_MODES = flags.DEFINE_list("modes", list(ops.SEQUENCE_PARALLEL), "ops.SEQUENCE_PARALLEL modes.")
_IMPL = flags.DEFINE_enum("impl", "xla", ["xla", "pallas", "auto"], "Attention per block.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Inputs' dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per cell (the median is reported).")


def _mesh(split: int):
  config = load_config_file(f"{REPO_ROOT}/configs/llm/pretrain.py:tiny")
  for field, value in (("mesh.num_devices", split), ("mesh.data", 1), ("mesh.sequence", split)):
    set_field(config, field, value)
  return parallel.make_mesh(config.mesh)


def _measure(split: int, mode: str) -> tuple[float, float]:
  """(temporary MiB per device, median seconds per forward + backward)."""
  b, t, n, k, h = _BATCH.value, _LENGTH.value, _HEADS.value, _KV_HEADS.value, _HEAD_DIM.value
  dtype = jnp.dtype(_DTYPE.value)
  mesh = _mesh(split)
  with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.rules_tuple(DEFAULT_LOGICAL_AXIS_RULES)):
    def place(heads, names, seed):
      x = jax.random.normal(jax.random.key(seed), (b, t, heads, h), dtype)
      if mode == "striped_ring":
        x = ops.to_stripes(x, split)
      return jax.device_put(x, NamedSharding(
          mesh, parallel.context.logical_spec(names, x.shape, mesh)))
    q = place(n, ("batch", "length", "heads", None), 0)
    kv = [place(k, ("batch", "length", "kv_heads", None), seed) for seed in (1, 2)]

    def loss(q, k, v):
      out = ops.attention(q, k, v, causal=True, impl=_IMPL.value, sequence_parallel=mode)
      return out.astype(jnp.float32).sum()

    step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    temp = step.lower(q, *kv).compile().memory_analysis().temp_size_in_bytes / 2**20
    jax.block_until_ready(step(q, *kv))
    times = []
    for _ in range(_REPEATS.value):
      start = time.perf_counter()
      jax.block_until_ready(step(q, *kv))
      times.append(time.perf_counter() - start)
  return temp, statistics.median(times)


def main(argv):
  del argv
  device = jax.devices()[0]
  print(f"{datetime.date.today()} {platform.node()} jax {jax.__version__} {device.platform} "
        f"({device.device_kind}), {jax.device_count()} devices; length {_LENGTH.value}, batch "
        f"{_BATCH.value}, heads {_HEADS.value}/{_KV_HEADS.value} x {_HEAD_DIM.value}, "
        f"{_DTYPE.value}, impl {_IMPL.value}", flush=True)
  rows = []
  for split in map(int, _SPLITS.value):
    if split > jax.device_count() or _LENGTH.value % split:
      print(f"split {split}: skipped ({jax.device_count()} devices, length {_LENGTH.value})")
      continue
    baseline = None
    for mode in _MODES.value:
      temp, seconds = _measure(split, mode)
      baseline = temp if baseline is None else baseline
      rows.append((split, mode, temp, seconds * 1e3, baseline / max(temp, 1e-9)))
      print(f"split {split} {mode}: {temp:.2f} MiB temporaries, {seconds * 1e3:.1f} ms",
            flush=True)
  print("\n| devices | mode | temporaries per device | fwd+bwd ms | memory vs first mode |")
  print("| ---: | --- | ---: | ---: | ---: |")
  for split, mode, temp, ms, ratio in rows:
    print(f"| {split} | {mode} | {temp:.2f} MiB | {ms:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
  app.run(main)
