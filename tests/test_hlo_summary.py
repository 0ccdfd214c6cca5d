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
  assert lines[body + 2].split()[0] == "1.000" and "f32[512,512]" in lines[body + 2]


def test_array_bytes_counts_every_array_of_a_tuple_shape():
  assert hlo_summary.array_bytes("(bf16[2,3]{1,0}, s32[], pred[4])") == 12 + 4 + 4
  assert hlo_summary.array_bytes("s4[8,2]") == 8


# A module in XLA's text form: a loop of known trip count whose body takes one [64, 256] float32
# slice (64 KiB) of a [4, 64, 256] stack inside a reduction kernel, writes one row into a
# [16, 256] buffer in place, and copies a 4 KiB array.
_MODULE = """
HloModule m, entry_computation_layout={(f32[4,64,256]{2,1,0})->f32[16,256]{1,0}}

%fused_reduce (param_0: f32[4,64,256], param_1: s32[]) -> f32[256] {
  %param_0 = f32[4,64,256]{2,1,0} parameter(0)
  %bitcast.1 = f32[4,64,256]{2,1,0} bitcast(%param_0)
  %param_1 = s32[] parameter(1)
  %c = s32[] constant(0)
  %dynamic-slice.1 = f32[1,64,256]{2,1,0} dynamic-slice(%bitcast.1, %param_1, %c, %c), dynamic_slice_sizes={1,64,256}
  %bitcast.2 = f32[64,256]{1,0} bitcast(%dynamic-slice.1)
  %zero = f32[] constant(0)
  ROOT %reduce.1 = f32[256]{0} reduce(%bitcast.2, %zero), dimensions={0}, to_apply=%add
}

%fused_save (param_0.2: f32[4,64,256], param_1.2: f32[256], param_2.2: s32[]) -> f32[4,64,256] {
  %param_0.2 = f32[4,64,256]{2,1,0} parameter(0)
  %param_1.2 = f32[256]{0} parameter(1)
  %bitcast.3 = f32[1,1,256]{2,1,0} bitcast(%param_1.2)
  %param_2.2 = s32[] parameter(2)
  %c.2 = s32[] constant(0)
  ROOT %dynamic-update-slice.2 = f32[4,64,256]{2,1,0} dynamic-update-slice(%param_0.2, %bitcast.3, %param_2.2, %c.2, %c.2)
}

%fused_lookup (param_0.3: f32[4,64,256], param_1.3: s32[2,1]) -> f32[2,64,256] {
  %param_0.3 = f32[4,64,256]{2,1,0} parameter(0)
  %param_1.3 = s32[2,1]{1,0} parameter(1)
  ROOT %gather.1 = f32[2,64,256]{2,1,0} gather(%param_0.3, %param_1.3), offset_dims={1,2}, collapsed_slice_dims={0}, start_index_map={0}, index_vector_dim=1, slice_sizes={1,64,256}
}

%body (p: (s32[], f32[4,64,256], f32[16,256])) -> (s32[], f32[4,64,256], f32[16,256]) {
  %p = (s32[], f32[4,64,256]{2,1,0}, f32[16,256]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %stack = f32[4,64,256]{2,1,0} get-tuple-element(%p), index=1
  %buffer = f32[16,256]{1,0} get-tuple-element(%p), index=2
  %input_reduce_fusion = f32[256]{0} fusion(%stack, %i), kind=kInput, calls=%fused_reduce
  %loop_dynamic_update_slice_fusion = f32[16,256]{1,0} fusion(%buffer, %input_reduce_fusion, %i), kind=kLoop, calls=%fused_dynamic_update_slice
  %copy.1 = f32[1024]{0} copy(%small)
  %looked_up = f32[2,64,256]{2,1,0} fusion(%stack, %ids), kind=kLoop, calls=%fused_lookup
  %saved = f32[4,64,256]{2,1,0} fusion(%stack, %input_reduce_fusion, %i), kind=kLoop, calls=%fused_save
  %fusion-start.1 = ((f32[4,64,256]{2,1,0}, f32[256]{0}, s32[]), f32[4,64,256]{2,1,0}, u32[]) fusion-start(%saved, %input_reduce_fusion, %i), kind=kLoop, calls=%fused_save
  %fusion-done.1 = f32[4,64,256]{2,1,0} fusion-done(%fusion-start.1)
  ROOT %t = (s32[], f32[4,64,256]{2,1,0}, f32[16,256]{1,0}) tuple(%i, %stack, %loop_dynamic_update_slice_fusion)
}

ENTRY %main (stack: f32[4,64,256]) -> f32[16,256] {
  %stack = f32[4,64,256]{2,1,0} parameter(0)
  %init = (s32[], f32[4,64,256]{2,1,0}, f32[16,256]{1,0}) tuple(%zero, %stack, %buffer)
  %while.1 = (s32[], f32[4,64,256]{2,1,0}, f32[16,256]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"4"}}
  ROOT %out = f32[16,256]{1,0} get-tuple-element(%while.1), index=2
}
"""


def test_traffic_counts_slices_in_place_updates_and_loop_trips():
  computations, entry = hlo_summary.parse(_MODULE)
  moved = {op[0]: m for m, op in hlo_summary.op_traffic(computations, "body")}
  assert moved["input_reduce_fusion"] == 64 * 256 * 4 + 4 + 256 * 4  # The slice, the index, out.
  assert moved["loop_dynamic_update_slice_fusion"] == 2 * (256 * 4 + 4)  # The row, not the buffer.
  assert moved["copy.1"] == 2 * 1024 * 4
  # A fusion whose root updates its first operand in place (a row saved into the stack), run
  # synchronously or by an asynchronous start and done: it moves the row, not the stack.
  saving = 256 * 4 + 4 + 256 * 4  # Reads the row and index (not the stack), writes the row.
  assert moved["saved"] == moved["fusion-done.1"] == saving
  # A gather reads the rows it takes (two [64, 256] blocks of the stack), not the whole stack.
  assert moved["looked_up"] == 2 * (2 * 64 * 256 * 4)
  body = hlo_summary.traffic(computations, "body")
  assert body == sum(moved.values())
  assert hlo_summary.traffic(computations, entry) == 4 * body  # Four trips of the body.
  assert "est. traffic" in hlo_summary.summarize(_MODULE, top=2)


def test_traffic_by_kind_splits_products_from_memory_bound_kernels_across_loop_trips():
  computations, entry = hlo_summary.parse(_MODULE)
  moved = {op[0]: m for m, op in hlo_summary.op_traffic(computations, "body")}
  totals = hlo_summary.traffic_by_kind(computations, entry)
  assert totals["matmul"] == [0, 0]  # No product in this module.
  assert totals["other"] == [4 * sum(moved.values()), 4 * len(moved)]


# XLA:GPU's dynamic-slice fusion: a cuBLAS product reading one [64, 256] bf16 layer of a [4, 64,
# 256] stack in place (an offset into the stack, not a copy), with the library's 32 MiB workspace
# as the last element of its output tuple.
_LIBRARY_MODULE = """
HloModule m

%dynamic-slice-fusion (p0: bf16[4,64,256], p1: s32[], p2: bf16[64]) -> (bf16[256], s8[33554432]) {
  %p2 = bf16[64]{0} parameter(2)
  %p0 = bf16[4,64,256]{2,1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %c = s32[] constant(0)
  %dynamic_slice.1 = bf16[1,64,256]{2,1,0} dynamic-slice(%p0, %p1, %c, %c), dynamic_slice_sizes={1,64,256}
  %bitcast.1 = bf16[64,256]{1,0} bitcast(%dynamic_slice.1)
  ROOT %custom-call.1 = (bf16[256]{0}, s8[33554432]{0}) custom-call(%p2, %bitcast.1), custom_call_target="__cublas$lt$matmul"
}

ENTRY %main (stack: bf16[4,64,256], i: s32[], x: bf16[64]) -> bf16[256] {
  %stack = bf16[4,64,256]{2,1,0} parameter(0)
  %i = s32[] parameter(1)
  %x = bf16[64]{0} parameter(2)
  %dynamic_slice_fusion = (bf16[256]{0}, s8[33554432]{0}) fusion(%stack, %i, %x), kind=kCustom, calls=%dynamic-slice-fusion, backend_config={"fusion_backend_config":{"kind":"__custom_fusion"}}
  %product = (bf16[256]{0}, s8[4194304]{0}) custom-call(%x, %x), custom_call_target="__cublas$lt$matmul"
  ROOT %out = bf16[256]{0} get-tuple-element(%dynamic_slice_fusion), index=0
}
"""


def test_library_calls_move_their_slices_and_outputs_not_their_workspace():
  computations, entry = hlo_summary.parse(_LIBRARY_MODULE)
  moved = {op[0]: m for m, op in hlo_summary.op_traffic(computations, entry)}
  assert moved["dynamic_slice_fusion"] == 64 * 256 * 2 + 4 + 64 * 2 + 256 * 2  # Layer, i, x, out.
  assert moved["product"] == 64 * 2 + 256 * 2


def test_an_allocated_buffer_moves_nothing():
  text = ('HloModule m\n\nENTRY %main () -> bf16[4,1024] {\n'
          '  ROOT %custom-call.1 = bf16[4,1024]{1,0} custom-call(), '
          'custom_call_target="AllocateBuffer"\n}\n')
  computations, entry = hlo_summary.parse(text)
  assert hlo_summary.traffic(computations, entry) == 0
  assert hlo_summary.program_kernels(computations, entry) == []


def test_a_conditional_counts_its_costliest_branch():
  def run(flag, x):
    return jax.lax.cond(flag, lambda x: (x @ x.T).sum(), lambda x: x[:1, :1].sum(), x)
  text = jax.jit(run).lower(True, jnp.ones((256, 256))).compile().as_text()
  computations, entry = hlo_summary.parse(text)
  conditional = next(op for op in computations[entry] if op[1] == "conditional")
  moved = {op[0]: m for m, op in hlo_summary.op_traffic(computations, entry)}
  branches = [hlo_summary.traffic(computations, b) for b in hlo_summary._branches(conditional[4])]
  assert len(branches) == 2 and moved[conditional[0]] == max(branches) > min(branches)
  assert hlo_summary.traffic(computations, entry) >= max(branches)


# XLA:TPU's form: no known_trip_count (the condition says i < 4), a layer's weights sliced by a
# fusion nested in the product's output fusion, and results placed in on-chip memory (S(1)).
_TPU_MODULE = """
HloModule t

%cond (p: (s32[], f32[4,64,256], f32[8,64])) -> pred[] {
  %c = s32[]{:T(128)} constant(4)
  %p = (s32[], f32[4,64,256]{2,1,0}, f32[8,64]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

%slice_layer (param_0: f32[4,64,256], param_1: s32[]) -> f32[64,256] {
  %param_0 = f32[4,64,256]{2,1,0} parameter(0)
  %param_1 = s32[] parameter(1)
  %z = s32[] constant(0)
  %ds = f32[1,64,256]{2,1,0} dynamic-slice(%param_0, %param_1, %z, %z), dynamic_slice_sizes={1,64,256}
  ROOT %b = f32[64,256]{1,0} bitcast(%ds)
}

%product (param_0.1: f32[4,64,256], param_1.1: s32[], param_2.1: f32[8,64]) -> f32[8,256] {
  %param_0.1 = f32[4,64,256]{2,1,0} parameter(0)
  %param_1.1 = s32[] parameter(1)
  %param_2.1 = f32[8,64]{1,0} parameter(2)
  %w = f32[64,256]{1,0} fusion(%param_0.1, %param_1.1), kind=kLoop, calls=%slice_layer
  ROOT %conv = f32[8,256]{1,0} convolution(%param_2.1, %w), dim_labels=bf_io->bf
}

%body (p.1: (s32[], f32[4,64,256], f32[8,64])) -> (s32[], f32[4,64,256], f32[8,64]) {
  %p.1 = (s32[], f32[4,64,256]{2,1,0}, f32[8,64]{1,0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%p.1), index=0
  %stack = f32[4,64,256]{2,1,0} get-tuple-element(%p.1), index=1
  %x = f32[8,64]{1,0} get-tuple-element(%p.1), index=2
  %staged = f32[8,64]{1,0:S(1)} copy(%x)
  %out = f32[8,256]{1,0:S(1)} fusion(%stack, %i.1, %staged), kind=kOutput, calls=%product
  ROOT %t = (s32[], f32[4,64,256]{2,1,0}, f32[8,64]{1,0}) tuple(%i.1, %stack, %x)
}

ENTRY %main (stack: f32[4,64,256], x: f32[8,64]) -> f32[8,64] {
  %stack = f32[4,64,256]{2,1,0} parameter(0)
  %x = f32[8,64]{1,0} parameter(1)
  %zero = s32[] constant(0)
  %init = (s32[], f32[4,64,256]{2,1,0}, f32[8,64]{1,0}) tuple(%zero, %stack, %x)
  %loop = (s32[], f32[4,64,256]{2,1,0}, f32[8,64]{1,0}) while(%init), condition=%cond, body=%body
  ROOT %r = f32[8,64]{1,0} get-tuple-element(%loop), index=2
}
"""


def test_tpu_programs_trip_counts_nested_slices_and_on_chip_memory():
  assert hlo_summary.array_bytes("(f32[8]{0:T(128)S(1)}, f32[4]{0})", on_chip=True) == 32
  assert hlo_summary.array_bytes("(f32[8]{0:T(128)S(1)}, f32[4]{0})", on_chip=False) == 16
  assert hlo_summary.array_bytes("(f32[8]{0:T(128)S(1)}, f32[4]{0})") == 48
  computations, entry = hlo_summary.parse(_TPU_MODULE)
  loop = next(op for op in computations[entry] if op[1] == "while")
  assert hlo_summary.trip_count(computations, loop[4]) == 4  # From the condition's i < 4.
  moved = {op[0]: m for m, op in hlo_summary.op_traffic(computations, "body")}
  assert moved["staged"] == 8 * 64 * 4  # Read from device memory, written on chip.
  # One layer's slice of the stack (through the nested fusion), the index; the staged input and
  # the on-chip output are no traffic.
  assert moved["out"] == 64 * 256 * 4 + 4
  assert hlo_summary.traffic(computations, entry) == 4 * sum(moved.values())
  kinds = hlo_summary.traffic_by_kind(computations, entry)
  assert kinds["matmul"] == [4 * moved["out"], 4]  # An output fusion is the product's kernel.


def test_the_at_layer_flash_kernel_reads_one_layer_of_its_stacks():
  text = """HloModule m

ENTRY %main (q: bf16[1,16,4,64], k: bf16[8,1,128,2,64]) -> bf16[1,16,4,64] {
  %q = bf16[1,16,4,64]{3,2,1,0} parameter(0)
  %k = bf16[8,1,128,2,64]{4,3,2,1,0} parameter(1)
  ROOT %pallas_call.1 = bf16[1,16,4,64]{3,2,1,0} custom-call(%q, %k), custom_call_target="__gpu$xla.gpu.triton", metadata={op_name="jit(f)/flash_attention_at_layer/pallas_call"}
}
"""
  computations, entry = hlo_summary.parse(text)
  moved = {op[0]: m for m, op in hlo_summary.op_traffic(computations, entry)}
  q_bytes, layer_bytes = 16 * 4 * 64 * 2, 128 * 2 * 64 * 2
  assert moved["pallas_call.1"] == q_bytes + layer_bytes + q_bytes  # Query, one layer, output.
  plain = text.replace("flash_attention_at_layer", "flash_attention_forward")
  computations, entry = hlo_summary.parse(plain)
  moved = {op[0]: m for m, op in hlo_summary.op_traffic(computations, entry)}
  assert moved["pallas_call.1"] == q_bytes + 8 * layer_bytes + q_bytes  # Any other call: all.
