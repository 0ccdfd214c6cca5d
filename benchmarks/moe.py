"""The mixture-of-experts MLP against a dense SwiGLU doing the same arithmetic per token.

  python benchmarks/moe.py --lengths=512,2048,8192 --experts=8 --top_k=2

A token routed to k experts of width f runs the products of a dense SwiGLU of width k * f, so that
dense MLP is what an MoE layer would cost with free routing. Each row times the jitted forward +
backward (gradients of the parameters and the input) of `gen_jax.models.MoeMlp` and of that dense
`SwiGLU` on the same [batch, length, embed] input, median of --repeats, and reads XLA's FLOP count
of each compiled program (`cost_analysis`): "moe / dense" is the price of routing (the router,
capacity padding, the dispatch into expert slots and the combine back), 1x at best, above it by
the capacity factor's padding at least. Temporaries are the compiled program's own figure.
Routing groups: whole sequences (--group_size=0) or windows of --group_size tokens.

The last lines are a markdown table.
"""
import datetime
import platform
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags

from gen_jax.models import MoeMlp
from gen_jax.models.layers import SwiGLU

_LENGTHS = flags.DEFINE_list("lengths", ["512", "2048", "8192"], "Tokens per sequence.")
_TOKENS = flags.DEFINE_integer("tokens_per_batch", 16384, "batch = this / length (at least 1).")
_EMBED = flags.DEFINE_integer("embed", 512, "Model width d.")
_MLP = flags.DEFINE_integer("mlp", 1024, "Each expert's hidden width f.")
_EXPERTS = flags.DEFINE_integer("experts", 8, "Experts e.")
_TOP_K = flags.DEFINE_integer("top_k", 2, "Experts per token k.")
_CAPACITY = flags.DEFINE_float("capacity_factor", 1.25, "Slots per expert, see expert_capacity.")
_GROUP = flags.DEFINE_integer("group_size", 0, "Tokens per routing group; 0: a sequence.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per row (median).")


def _measure(module, x, output):
  """(median seconds, GFLOP, temporaries MiB) of the jitted forward + backward of `module`."""
  params = nn.meta.unbox(module.init(jax.random.key(0), x[:1])["params"])
  def loss(params, x):
    return jnp.sum(output(module.apply({"params": params}, x)).astype(jnp.float32))
  step = jax.jit(jax.grad(loss, argnums=(0, 1)))
  compiled = step.lower(params, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
  jax.block_until_ready(compiled(params, x))
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, x))
    times.append(time.perf_counter() - start)
  return statistics.median(times), cost.get("flops", float("nan")) / 1e9, temp


def main(argv):
  del argv
  dtype = jnp.dtype(_DTYPE.value)
  e, k, f, d = _EXPERTS.value, _TOP_K.value, _MLP.value, _EMBED.value
  print(f"{datetime.date.today()} {platform.node()} jax {jax.__version__} "
        f"{jax.devices()[0].device_kind}; d={d} f={f} e={e} k={k} capacity_factor="
        f"{_CAPACITY.value} group_size={_GROUP.value} {_DTYPE.value}")
  rows = []
  for length in map(int, _LENGTHS.value):
    batch = max(1, _TOKENS.value // length)
    x = jax.random.normal(jax.random.key(1), (batch, length, d), dtype)
    moe = MoeMlp(e, k, f, _CAPACITY.value, _GROUP.value, dtype=dtype)
    dense = SwiGLU(k * f, dtype=dtype)
    moe_s, moe_gflop, moe_temp = _measure(moe, x, lambda out: out[0])
    dense_s, dense_gflop, dense_temp = _measure(dense, x, lambda out: out)
    rows.append((length, batch, moe_s * 1e3, dense_s * 1e3, moe_s / dense_s, moe_gflop,
                 dense_gflop, moe_gflop / dense_gflop, moe_temp, dense_temp))
    print(*(f"{v:.3g}" if isinstance(v, float) else v for v in rows[-1]), flush=True)
  print("\n| length | batch | moe ms | dense ms | moe / dense time | moe GFLOP | dense GFLOP "
        "| moe / dense FLOPs | moe temp MiB | dense temp MiB |")
  print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
  for length, batch, ms, dms, ratio, gf, dgf, fratio, temp, dtemp in rows:
    print(f"| {length} | {batch} | {ms:.1f} | {dms:.1f} | {ratio:.2f}x | {gf:.1f} | {dgf:.1f} | "
          f"{fratio:.2f}x | {temp:.0f} | {dtemp:.0f} |")


if __name__ == "__main__":
  app.run(main)
