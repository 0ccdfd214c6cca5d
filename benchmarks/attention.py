"""Attention speed: the XLA reference, the Pallas flash kernels and cuDNN, forward + backward.

  python benchmarks/attention.py                       # on a GPU: xla, pallas, pallas_mosaic,
                                                       # cudnn; 1k..32k
  python benchmarks/attention.py --lengths=256,512,1024 --impls=xla   # what a CPU can run

Each row times jit(value_and_grad) of a causal grouped-query attention (Llama shapes: 32 query
heads, 8 kv heads of 128, bfloat16) over a fixed number of tokens per batch, so the batch shrinks as
the length grows. FLOPs are counted the FlashAttention way: a forward pass is 4 * b * t * s * n * h
multiply-adds halved for the causal mask, and forward + backward is 3.5 times the forward (the
backward recomputes the scores). Ratios are against the XLA reference and against cuDNN measured in
the same run. Out-of-memory cells print "OOM" (the XLA reference materializes the t x s scores).
Before timing, each implementation is checked against the XLA reference run in float32 on the same
(upcast) inputs, outputs and all three gradients, at an awkward length (--check_length, not a
multiple of the kernels' blocks): relative errors are printed, and an implementation that misses
--check_tolerance is reported as wrong, not timed.
--pallas_blocks=BQxBK,... also times the Pallas kernel with those tiles forced on all three of its
kernels (forward, dK/dV, dQ) at --sweep_length, beside its default tiles, and
--pallas_triton=WxS,... with W warps per program and S pipeline stages (Triton's num_warps and
num_stages) on all three: the levers for tuning the GPU kernel's defaults within the same run.
--split_forward (default on) then times each implementation's forward pass alone at
--sweep_length, so the forward + backward gap splits into its forward and backward parts (the
backward's time is the total less the forward's; FLOPs: 1 and 2.5 forwards). On a GPU it also
times the forward of JAX's own Mosaic GPU attention example
(jax.experimental.pallas.ops.gpu.attention_mgpu: Hopper's wgmma and TMA copies, causal, grouped
heads, no segment ids, no causal backward) with --mosaic_example_tiles, after checking its output
against the float32 reference at length 1024: how far a Mosaic GPU kernel gets against cuDNN's
forward on this machine, where the Triton-lowered kernel stands at about half of cuDNN's.
--decode_lengths=S,... then times a decoding step's attention: one query per row (batch
--decode_batch) against S cached keys at offset S - 1, forward only, for xla, the Pallas kernel
(which splits the keys over programs when its grid is small: Flash-Decoding) and the Pallas
kernel unsplit (pallas:splits=1), with the bandwidth of reading the keys and values.
The last lines are markdown tables for docs/BENCHMARKS.md.
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
_IMPLS = flags.DEFINE_list("impls", ["xla", "pallas", "pallas_mosaic", "cudnn"],
                           "ops.attention implementations (pallas: the Triton kernels; "
                           "pallas_mosaic: the Mosaic GPU ones), a flash one with kernel "
                           "settings (ops.FLASH_SETTINGS, e.g. pallas_mosaic:dq=atomic), or "
                           "mosaic_example:BQxBKV.")
_TOKENS = flags.DEFINE_integer("tokens_per_batch", 32768, "batch = tokens_per_batch / length (>= 1).")
_HEADS = flags.DEFINE_integer("num_heads", 32, "Query heads.")
_KV_HEADS = flags.DEFINE_integer("num_kv_heads", 8, "Key/value heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "Head dimension.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Input dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed runs per cell (the median is reported).")
_PALLAS_BLOCKS = flags.DEFINE_list("pallas_blocks", [], "Tiles BQxBK to time the Pallas kernel "
                                   "with at --sweep_length (e.g. 64x64,128x128).")
_PALLAS_TRITON = flags.DEFINE_list("pallas_triton", [], "Triton settings WARPSxSTAGES to time the "
                                   "Pallas GPU kernel with at --sweep_length (e.g. 4x2,8x3).")
_SWEEP_LENGTH = flags.DEFINE_integer("sweep_length", 8192, "Length of the --pallas_blocks and "
                                     "--pallas_triton sweeps.")
_SPLIT_FORWARD = flags.DEFINE_bool("split_forward", True, "Also time each implementation's "
                                    "forward pass alone at --sweep_length.")
_MOSAIC_TILES = flags.DEFINE_list("mosaic_example_tiles", ["64x128", "64x256"], "Tiles "
                                   "BQxBKV of JAX's Mosaic GPU attention example, timed forward "
                                   "only beside --split_forward on a GPU; empty: not timed.")
_DECODE_LENGTHS = flags.DEFINE_list("decode_lengths", [], "Cached keys for the decoding rows "
                                     "(one query each; empty: none).")
_DECODE_BATCH = flags.DEFINE_integer("decode_batch", 1, "Rows of the decoding step.")
_CHECK_LENGTH = flags.DEFINE_integer("check_length", 1000, "Length of the check against the "
                                     "float32 reference; 0 skips it.")
_CHECK_TOLERANCE = flags.DEFINE_float("check_tolerance", 2e-2, "Largest relative error allowed "
                                      "(bfloat16 operands land between 1e-3 and 1e-2).")


def _inputs(batch: int, length: int, dtype, seed: int = 0):
  """Random q [b, t, n, h], k and v [b, t, kv, h], and an output cotangent like q."""
  keys = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(keys[0], (batch, length, _HEADS.value, _HEAD_DIM.value), dtype)
  k = jax.random.normal(keys[1], (batch, length, _KV_HEADS.value, _HEAD_DIM.value), dtype)
  v = jax.random.normal(keys[2], (batch, length, _KV_HEADS.value, _HEAD_DIM.value), dtype)
  return q, k, v, jax.random.normal(keys[3], q.shape, dtype)


def _attention(impl: str, q, k, v, query_offset=0):
  """ops.attention with `impl`, which may carry the flash kernels' settings (ops.FLASH_SETTINGS:
  "pallas:tiles=BQxBK", "pallas_mosaic:dq=atomic", ...); "mosaic_example:BQxBKV" is JAX's Mosaic
  GPU attention example, forward only."""
  if impl.startswith("mosaic_example:"):
    from jax.experimental.pallas.ops.gpu import attention_mgpu
    block_q, block_kv = map(int, impl.partition(":")[2].split("x"))
    config = attention_mgpu.TuningConfig(block_q=block_q, block_kv=block_kv,
                                         max_concurrent_steps=2, causal=True)
    scale = 1.0 / np.sqrt(q.shape[-1])  # The example does not scale the logits itself.
    return attention_mgpu.attention((q * scale).astype(q.dtype), k, v, config)
  return ops.attention(q, k, v, causal=True, impl=impl, query_offset=query_offset)


def _forward_backward(impl: str):
  """jit of (q, k, v, cotangent) -> (output, dq, dk, dv): the gradients of sum(output *
  cotangent)."""
  def loss(q, k, v, cotangent):
    out = _attention(impl, q, k, v)
    return (out.astype(jnp.float32) * cotangent.astype(jnp.float32)).sum(), out
  def output_and_grads(q, k, v, cotangent):
    grads, out = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v, cotangent)
    return (out, *grads)
  return jax.jit(output_and_grads)


def _relative_errors(impl: str) -> list[float]:
  """||impl - reference|| / ||reference|| for the output, dq, dk and dv; the reference is XLA in
  float32 on the same inputs upcast (fresh random ones, seed 1)."""
  inputs = _inputs(1, _CHECK_LENGTH.value, jnp.dtype(_DTYPE.value), seed=1)
  ours = _forward_backward(impl)(*inputs)
  with jax.default_matmul_precision("highest"):  # A GPU's float32 default is TF32.
    reference = _forward_backward("xla")(*(x.astype(jnp.float32) for x in inputs))
  return [float(jnp.linalg.norm((a.astype(jnp.float32) - b).ravel()) / jnp.linalg.norm(b.ravel()))
          for a, b in zip(ours, reference)]


def _time_forward_backward(impl: str, length: int, forward_only: bool = False) -> float:
  """Median seconds of one jitted forward + backward (or forward) at this length."""
  batch = max(1, _TOKENS.value // length)
  inputs = _inputs(batch, length, jnp.dtype(_DTYPE.value))
  step = (jax.jit(lambda q, k, v, _: _attention(impl, q, k, v)) if forward_only
          else _forward_backward(impl))
  jax.block_until_ready(step(*inputs))  # Compile and warm up.
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(step(*inputs))
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
  wrong = {}  # impl -> why it is not timed
  for impl in _IMPLS.value if _CHECK_LENGTH.value else []:
    try:
      errors = _relative_errors(impl)
    except Exception as e:  # noqa: BLE001 - reported in its cells below.
      print(f"  check {impl:7s} could not run: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
      continue
    verdict = "ok" if all(e <= _CHECK_TOLERANCE.value for e in errors) else "WRONG"  # NaN: WRONG
    print(f"  check {impl:7s} length {_CHECK_LENGTH.value}: relative error out/dq/dk/dv "
          + " ".join(f"{e:.1e}" for e in errors) + f" {verdict}", flush=True)
    if verdict != "ok":
      wrong[impl] = "wrong (see the check)"
  for length in map(int, _LENGTHS.value):
    for impl in _IMPLS.value:
      if impl in wrong:
        results[impl, length] = wrong[impl]
        continue
      results[impl, length] = _cell(impl, length)
      cell = results[impl, length]
      shown = f"{_flops(length) / cell / 1e12:.3g} TFLOP/s" if isinstance(cell, float) else cell
      print(f"  length {length:6d} {impl:7s} {shown}", flush=True)

  if not _LENGTHS.value:  # Decoding rows only.
    _decode_rows()
    return
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
  if _SPLIT_FORWARD.value:
    _split_forward(results, wrong)
  if _PALLAS_BLOCKS.value or _PALLAS_TRITON.value:
    _sweep_settings()
  if _DECODE_LENGTHS.value:
    _decode_rows()


def _decode_rows():
  """A decoding step's attention (see the module doc): microseconds and the bandwidth of reading
  the cached keys and values, per implementation, the unsplit Pallas kernel's time over each."""
  impls = ["xla", "pallas", "pallas:splits=1"]
  dtype = jnp.dtype(_DTYPE.value)
  print("\n| cached keys | batch | " + " | ".join(f"{i} us (GB/s)" for i in impls)
        + " | pallas:splits=1 / pallas |\n|" + " ---: |" * (len(impls) + 3))
  for length in map(int, _DECODE_LENGTHS.value):
    b = _DECODE_BATCH.value
    q, k, v, _ = _inputs(b, length, dtype)
    q = q[:, :1]
    offset = jnp.int32(length - 1)  # Traced: one compilation serves every step, as in decoding.
    cache_bytes = 2 * k.size * dtype.itemsize
    cells, seconds = [], {}
    for impl in impls:
      try:
        step = jax.jit(lambda q, k, v, o, impl=impl: _attention(impl, q, k, v, query_offset=o))
        jax.block_until_ready(step(q, k, v, offset))
        times = []
        for _ in range(_REPEATS.value):
          start = time.perf_counter()
          jax.block_until_ready(step(q, k, v, offset))
          times.append(time.perf_counter() - start)
        seconds[impl] = float(np.median(times))
        cells.append(f"{seconds[impl] * 1e6:.1f} ({cache_bytes / seconds[impl] / 1e9:.0f})")
      except Exception as e:  # noqa: BLE001 - reported in its cell.
        cells.append(f"n/a ({type(e).__name__})")
    ratio = (f"{seconds['pallas:splits=1'] / seconds['pallas']:.2f}x"
             if {"pallas", "pallas:splits=1"} <= seconds.keys() else "-")
    print(f"| {length} | {b} | " + " | ".join(cells) + f" | {ratio} |")


def _split_forward(results, wrong):
  """Forward alone and the backward (the rest) per implementation at --sweep_length, with their
  ratios to cuDNN's: which pass holds the gap."""
  length = _SWEEP_LENGTH.value
  forward_flops = _flops(length) / 3.5
  rows = []
  for impl in _IMPLS.value:
    total = wrong.get(impl) or results.get((impl, length)) or _cell(impl, length)
    forward = _cell(impl, length, forward_only=True) if isinstance(total, float) else total
    backward = total - forward if isinstance(forward, float) else forward
    if isinstance(backward, float) and backward <= 0:  # Timing noise at a tiny length.
      backward = "n/a (forward >= total)"
    rows.append((impl, forward, backward))
  print(f"\n| length {length} | forward TFLOP/s | backward TFLOP/s | forward / cudnn | "
        "backward / cudnn |\n| --- | ---: | ---: | ---: | ---: |")
  reference = {impl: (f, b) for impl, f, b in rows}.get("cudnn")
  for impl, forward, backward in rows:
    cells = []
    for seconds, flops in ((forward, forward_flops), (backward, 2.5 * forward_flops)):
      cells.append(f"{flops / seconds / 1e12:.3g}" if isinstance(seconds, float) else seconds)
    for ours, theirs in zip((forward, backward), reference or (None, None)):
      cells.append(f"{theirs / ours:.2f}x" if isinstance(ours, float) and
                   isinstance(theirs, float) else "-")
    print(f"| {impl} | " + " | ".join(cells) + " |")
  if jax.default_backend() == "gpu":
    _mosaic_example(forward_flops, reference[0] if reference else None)


def _mosaic_example(forward_flops: float, cudnn_forward):
  """Rows of JAX's Mosaic GPU attention example, forward only (see the module doc)."""
  for tiles in _MOSAIC_TILES.value:
    impl = f"mosaic_example:{tiles}"
    try:
      inputs = _inputs(1, 1024, jnp.dtype(_DTYPE.value), seed=1)[:3]
      ours = jax.jit(lambda q, k, v: _attention(impl, q, k, v))(*inputs).astype(jnp.float32)
      with jax.default_matmul_precision("highest"):
        want = ops.attention(*(x.astype(jnp.float32) for x in inputs), causal=True, impl="xla")
      error = f"{float(jnp.linalg.norm(ours - want) / jnp.linalg.norm(want)):.1e}"
    except Exception as e:  # noqa: BLE001 - reported in the row, like a cell that cannot run.
      error = f"n/a ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:80]})"
    seconds = _cell(impl, _SWEEP_LENGTH.value, forward_only=True)
    speed = f"{forward_flops / seconds / 1e12:.3g}" if isinstance(seconds, float) else seconds
    ratio = (f"{cudnn_forward / seconds:.2f}x" if isinstance(seconds, float) and
             isinstance(cudnn_forward, float) else "-")
    print(f"| {impl} (forward only; error at 1024: {error}) | {speed} | - | {ratio} | - |")


def _cell(impl: str, length: int, forward_only: bool = False) -> float | str:
  """Median seconds of forward + backward (or forward), or why it could not run."""
  try:
    return _time_forward_backward(impl, length, forward_only)
  except Exception as e:  # noqa: BLE001 - a cell that cannot run is reported, not fatal.
    message = str(e)
    return "OOM" if "RESOURCE_EXHAUSTED" in message or "memory" in message \
        else f"n/a ({type(e).__name__}: {(message.splitlines() or [''])[0][:60]})"


def _sweep_settings():
  """The Pallas kernel at --sweep_length with each of --pallas_blocks and --pallas_triton, against
  its defaults."""
  length = _SWEEP_LENGTH.value
  impls = (["pallas"] + [f"pallas:tiles={blocks}" for blocks in _PALLAS_BLOCKS.value]
           + [f"pallas:triton={setting}" for setting in _PALLAS_TRITON.value])
  seconds = {impl: _cell(impl, length) for impl in impls}
  print(f"\n| Pallas settings at length {length} | TFLOP/s | x default |\n| --- | ---: | ---: |")
  for impl in impls:
    cell, default = seconds[impl], seconds["pallas"]
    speed = f"{_flops(length) / cell / 1e12:.3g}" if isinstance(cell, float) else cell
    ratio = f"{default / cell:.2f}x" if isinstance(cell, float) and isinstance(default, float) \
        else "-"
    print(f"| {impl.partition(':')[2] or 'defaults'} | {speed} | {ratio} |")


if __name__ == "__main__":
  app.run(main)
