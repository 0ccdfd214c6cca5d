"""Attention speed: the XLA reference, the Pallas flash kernel and cuDNN, forward + backward.

  python benchmarks/attention.py                       # on a GPU: xla, pallas, cudnn; 1k..32k
  python benchmarks/attention.py --lengths=256,512,1024 --impls=xla   # what a CPU can run

Each row times jit(value_and_grad) of a causal grouped-query attention (Llama shapes: 32 query
heads, 8 kv heads of 128, bfloat16) over a fixed number of tokens per batch, so the batch shrinks as
the length grows. FLOPs are counted the FlashAttention way: a forward pass is 4 * b * t * s * n * h
multiply-adds halved for the causal mask, and forward + backward is 3.5 times the forward (the
backward recomputes the scores). Ratios are against the XLA reference and against cuDNN measured in
the same run. Out-of-memory cells print "OOM" (the XLA reference materializes the t x s scores).
The last lines are a markdown table for docs/BENCHMARKS.md.
"""
import datetime
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from gen_jax import ops

_LENGTHS = flags.DEFINE_list("lengths", ["1024", "2048", "4096", "8192", "16384", "32768"],
                             "Sequence lengths.")
_IMPLS = flags.DEFINE_list("impls", ["xla", "pallas", "cudnn"], "ops.attention implementations.")
_TOKENS = flags.DEFINE_integer("tokens_per_batch", 32768, "batch = tokens_per_batch / length (>= 1).")
_HEADS = flags.DEFINE_integer("num_heads", 32, "Query heads.")
_KV_HEADS = flags.DEFINE_integer("num_kv_heads", 8, "Key/value heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "Head dimension.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Input dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed runs per cell (the median is reported).")


def _time_forward_backward(impl: str, length: int) -> float:
  """Median seconds of one jitted forward + backward at this length."""
  batch = max(1, _TOKENS.value // length)
  dtype = jnp.dtype(_DTYPE.value)
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (batch, length, _HEADS.value, _HEAD_DIM.value), dtype)
  k = jax.random.normal(keys[1], (batch, length, _KV_HEADS.value, _HEAD_DIM.value), dtype)
  v = jax.random.normal(keys[2], (batch, length, _KV_HEADS.value, _HEAD_DIM.value), dtype)
  cotangent = jax.random.normal(keys[3], q.shape, dtype)

  @jax.jit
  def step(q, k, v):
    loss = lambda q, k, v: (ops.attention(q, k, v, causal=True, impl=impl)  # noqa: E731
                            .astype(jnp.float32) * cotangent).sum()
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

  jax.block_until_ready(step(q, k, v))  # Compile and warm up.
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(step(q, k, v))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _flops(length: int) -> float:
  batch = max(1, _TOKENS.value // length)
  forward = 4 * batch * length * length * _HEADS.value * _HEAD_DIM.value / 2
  return 3.5 * forward


def main(argv):
  del argv
  device = jax.devices()[0]
  print(f"{datetime.date.today()} {device.device_kind} ({device.platform}), jax {jax.__version__}, "
        f"{platform.processor() or platform.machine()}")
  results: dict[tuple[str, int], float | str] = {}
  for length in map(int, _LENGTHS.value):
    for impl in _IMPLS.value:
      try:
        results[impl, length] = _time_forward_backward(impl, length)
      except Exception as e:  # noqa: BLE001 - a cell that cannot run is reported, not fatal.
        message = str(e)
        results[impl, length] = "OOM" if "RESOURCE_EXHAUSTED" in message or "memory" in message \
            else f"n/a ({type(e).__name__}: {message.splitlines()[0][:60]})"
      cell = results[impl, length]
      shown = f"{_flops(length) / cell / 1e12:.3g} TFLOP/s" if isinstance(cell, float) else cell
      print(f"  length {length:6d} {impl:7s} {shown}", flush=True)

  header = ["length", "batch"] + [f"{i} TFLOP/s" for i in _IMPLS.value]
  ratios = [(a, b) for a in _IMPLS.value for b in ("xla", "cudnn") if a != b and b in _IMPLS.value]
  header += [f"{a}/{b}" for a, b in ratios]
  print("\n| " + " | ".join(header) + " |\n|" + " ---: |" * len(header))
  for length in map(int, _LENGTHS.value):
    row = [str(length), str(max(1, _TOKENS.value // length))]
    for impl in _IMPLS.value:
      cell = results[impl, length]
      row.append(f"{_flops(length) / cell / 1e12:.3g}" if isinstance(cell, float) else cell)
    for a, b in ratios:
      ta, tb = results[a, length], results[b, length]
      row.append(f"{tb / ta:.2f}x" if isinstance(ta, float) and isinstance(tb, float) else "-")
    print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
  app.run(main)
