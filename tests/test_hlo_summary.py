"""benchmarks/hlo_summary.py reads XLA's optimized HLO: it finds every while-loop body, counts the
operations each launches and lists the largest outputs, where a per-step copy would show."""
import importlib.util
import pathlib

import jax
import jax.numpy as jnp

_PATH = pathlib.Path(__file__).parent.parent / "benchmarks" / "hlo_summary.py"
_SPEC = importlib.util.spec_from_file_location("hlo_summary", _PATH)
hlo_summary = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(hlo_summary)


def test_a_loop_that_rebuilds_a_large_array_every_step_shows_it_in_its_body():
  def step(_, carry):
    x, table = carry
    table = table * 1.0001 + x.sum()  # [512, 512] float32: 1 MiB written every step.
    return x @ table[:64, :64], table
  def run(x, table):
    return jax.lax.fori_loop(0, jnp.int32(x[0, 0]) + 3, step, (x, table))
  text = jax.jit(run).lower(jnp.ones((8, 64)), jnp.ones((512, 512))).compile().as_text()
  summary = hlo_summary.summarize(text, top=3)
  lines = summary.splitlines()
  assert lines[0].startswith("ENTRY ")
  body = next(i for i, line in enumerate(lines) if line.startswith("while body (depth 1)"))
  count = int(lines[body].split(": ")[1].split(" operations")[0])
  assert count >= 2
  assert lines[body + 1].split()[0] == "1.000" and "f32[512,512]" in lines[body + 1]


def test_array_bytes_counts_every_array_of_a_tuple_shape():
  assert hlo_summary.array_bytes("(bf16[2,3]{1,0}, s32[], pred[4])") == 12 + 4 + 4
  assert hlo_summary.array_bytes("s4[8,2]") == 8
