"""XLA's compiled program for gen_jax's decoding loop, train step or attention kernels on a GPU or
TPU this machine does not have.

  pip install "jax[cuda13]==$(python -c 'import jax; print(jax.__version__)')"   # once; no GPU
  pip install "jax[tpu]==$(python -c 'import jax; print(jax.__version__)')"      # for TPU targets
  python benchmarks/aot_hlo.py --hf_config=benchmarks/llama_1b_config.json --variant=scan_layers=False
  python benchmarks/aot_hlo.py --hf_config=benchmarks/llama_1b_config.json --xla_options=none
  python benchmarks/aot_hlo.py --program=train --config=configs/llm/pretrain.py:1b --batch_size=16 \
      --set=model.attention_impl=pallas --set=model.remat=dots
  python benchmarks/aot_hlo.py --program=train --target=tpu:v5e:2x2 --config=configs/llm/pretrain.py:1b
  python benchmarks/aot_hlo.py --program=attention --impls=pallas_mosaic,pallas_mosaic:dq=atomic \
      --lengths=8192 --head_dim=128

JAX can compile for a device it does not have (deviceless ahead-of-time compilation: a
compile-only client built from a target description, `jax.experimental.topologies`), given the
CUDA plugin or libtpu installed beside jaxlib. A GPU target is one GPU described to XLA (an H200 or
H100); a TPU target is a slice topology (`tpu:v5e:2x2`, `tpu:v4:2x2x1`, ...): all its chips, so a
train step compiles on the config's mesh over them (the TPU compiler's own memory figures per
chip, where `--dry_run` estimates with XLA:CPU), and the Pallas kernels go through the real Mosaic
compiler, where the test suite can only interpret them. This script compiles `gen_jax.sampling`'s generation (prefill, then the
loop of single-token steps; batch --batch, greedy) for an H200 or H100 with random-weight shapes of
a Hugging Face config (nothing is allocated: a 7B model compiles on a laptop), writes XLA's
optimized HLO to --out, and prints `hlo_summary.py`'s account of it: the kernels of each loop
body, the largest outputs, the instructions moving the most bytes, and the estimated bytes one
execution moves. The last line sets the token loop's estimate beside the bytes a step must read
(the weights it multiplies by and the KV cache): their ratio bounds the fraction of the bandwidth
roofline any speed of the kernels can reach. The loop compiles with the XLA options the sampler
uses on the target's platform (gen_jax.sampling.jit.COMPILER_OPTIONS), or with XLA's defaults
(--xla_options=none).

--program=attention compiles benchmarks/attention.py's forward + backward (its --impls, --lengths
and shape flags, e.g. --impls=pallas_mosaic,pallas_mosaic:dq=atomic --lengths=8192). For every
program, each Mosaic GPU kernel compiled (XLA:GPU takes them through ptxas to SASS with the rest,
no GPU needed) is listed with ptxas' registers per thread, spilled bytes and its shared memory;
its dumps (PTX, ptxas' report, SASS where nvdisasm is installed: `pip install
nvidia-cuda-nvdisasm`) stay under --out/mosaic_gpu/.

--program=train compiles a config's real train step (gen_jax.train.dry_run.compile_train_step: the
family's loss, the optimizer update, the config's mesh over the target's devices) the same way and
prints the same account, with the compiler's own memory figures per device.

On a TPU target the program and memory figures are XLA:TPU's, and the estimate counts what its
layouts place in on-chip memory (memory spaces S(1), S(2): the weights XLA:TPU stages into VMEM
for the next kernels, and a short KV cache it keeps there) as no traffic, and reads loop trip
counts from the loops' conditions; no data-sheet bandwidth is kept for TPUs, so no times.

What it cannot see: times (no autotuning without the device, so Triton GEMM tiles are defaults;
a kernel's speed is the lent GPU's question, benchmarks/device_checks.sh), and launches' overhead.
What it settles here: which copies, relayouts and unfused products XLA:GPU puts in every step.
"""
import contextlib
import dataclasses
import json
import os
import re
import shutil
import time
from collections.abc import Iterator

import jax
from absl import app, flags

import attention  # benchmarks/, the script's own directory: --program=attention takes its flags.

_PROGRAM = flags.DEFINE_enum("program", "decode", ["decode", "train", "attention"],
                             "What to compile.")
_CONFIG = flags.DEFINE_string("config", "configs/llm/pretrain.py:1b", "--program=train: file:preset.")
_SET = flags.DEFINE_multi_string("set", [], "--program=train: overrides, e.g. model.remat=dots.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 0, "--program=train: global batch; 0: preset's.")
_HF_CONFIG = flags.DEFINE_string("hf_config", "benchmarks/llama_1b_config.json",
                                 "A Hugging Face config.json: the architecture compiled.")
_VARIANT = flags.DEFINE_string("variant", "", "Comma-separated FIELD=VALUE of TransformerConfig "
                               "(e.g. scan_layers=False), or steps_per_check=K of the loop.")
_WEIGHTS = flags.DEFINE_enum("weights", "bfloat16", ["bfloat16", "int8", "int4"], "Weight format.")
_BATCH = flags.DEFINE_integer("batch", 1, "Rows decoded at once.")
_PROMPT = flags.DEFINE_integer("prompt_tokens", 5, "Prompt length.")
_NEW = flags.DEFINE_integer("new_tokens", 64, "Tokens generated per row.")
_TARGET = flags.DEFINE_string("target", "h200", "h200, h100, or tpu:TOPOLOGY (e.g. tpu:v5e:2x2).")
_OUT = flags.DEFINE_string("out", "/tmp/aot_hlo", "Directory for the optimized HLO text.")
_XLA_OPTIONS = flags.DEFINE_enum("xla_options", "decoding", ["decoding", "none"], "decoding: "
                                  "gen_jax.sampling.jit.COMPILER_OPTIONS of the target's "
                                  "platform, as the sampler compiles; none: XLA's defaults.")
_TOP = flags.DEFINE_integer("top", 6, "Instructions listed per loop body.")



def _parse_variant(config):
  changes, steps_per_check = {}, 1
  for assignment in filter(None, _VARIANT.value.split(",")):
    name, _, value = assignment.partition("=")
    if name == "steps_per_check":
      steps_per_check = int(value)
    elif hasattr(config, name) and value:
      current = getattr(config, name)
      changes[name] = (value.lower() in ("1", "true") if isinstance(current, bool)
                       else type(current)(value))
    else:
      raise app.UsageError(f"--variant: {assignment!r} is not FIELD=VALUE of a model field")
  return dataclasses.replace(config, **changes), steps_per_check


def _train() -> str:
  """--program=train: the compiled step's HLO text (and its memory figures, printed)."""
  from gen_jax.config import load_config_file
  from gen_jax.config.presets import set_fields
  from gen_jax.train.dry_run import compile_train_step
  config = load_config_file(_CONFIG.value)
  set_fields(config, _SET.value)
  if _BATCH_SIZE.value:
    config.train.batch_size = _BATCH_SIZE.value
  compiled, _, mesh = compile_train_step(config, target=_TARGET.value)
  memory = compiled.memory_analysis()
  print(f"mesh {dict(mesh.shape)}; memory per device: arguments {memory.argument_size_in_bytes / 2**30:.2f} GiB, temporaries "
        f"{memory.temp_size_in_bytes / 2**30:.2f} GiB, outputs {memory.output_size_in_bytes / 2**30:.2f} "
        f"GiB (aliased {memory.alias_size_in_bytes / 2**30:.2f})")
  return compiled.as_text()


def _attention(devices) -> None:
  """--program=attention: benchmarks/attention.py's forward + backward for each of its --impls at
  each of its --lengths (its shape flags), compiled for the target; then Mosaic GPU's account of
  its kernels (`_print_mosaic_kernels`)."""
  import jax.numpy as jnp
  mesh = jax.sharding.Mesh(devices[:1], ("x",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  for length in map(int, attention._LENGTHS.value):
    batch = max(1, attention._TOKENS.value // length)
    inputs = [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated) for x in jax.eval_shape(
        lambda: attention._inputs(batch, length, jnp.dtype(attention._DTYPE.value)))]
    for impl in attention._IMPLS.value:
      start = time.perf_counter()
      name = f"{_TARGET.value.replace(':', '-')}_attention_{impl}_{length}_b{batch}"
      try:
        with jax.set_mesh(mesh), _mosaic_dumps(name) as dump:  # (Pallas' GPU lowering reads
          compiled = attention._forward_backward(impl).lower(*inputs).compile()  # the mesh.)
      except Exception as e:  # noqa: BLE001 - e.g. tiles over the shared memory: the next impl.
        print(f"{impl} at length {length}: does not compile: {type(e).__name__}: "
              f"{(str(e).splitlines() or [''])[0][:200]}")
        continue
      _write(compiled.as_text(), name, start)
      _print_mosaic_kernels(dump)


@contextlib.contextmanager
def _mosaic_dumps(name: str) -> Iterator[str]:
  """Mosaic GPU dumps each kernel the block compiles (ptxas' report among its files) into the
  directory yielded, --out/mosaic_gpu/NAME (`_print_mosaic_kernels` reads it)."""
  dump = os.path.join(_OUT.value, "mosaic_gpu", name)
  shutil.rmtree(dump, ignore_errors=True)
  os.makedirs(dump)  # (Absent, Mosaic GPU prints its dumps instead.)
  os.environ.update(MOSAIC_GPU_DUMP_PTXAS="1", MOSAIC_GPU_DUMP_TO=dump)
  try:
    yield dump
  finally:
    del os.environ["MOSAIC_GPU_DUMP_TO"]


def _print_mosaic_kernels(dump: str) -> None:
  """Each Mosaic GPU kernel compiled (XLA:GPU compiles them to SASS with the program, so ptxas
  runs here without a GPU): registers per thread, spills, and shared memory, from its dumps."""
  names = sorted(f.removesuffix(".ptxas") for f in os.listdir(dump) if f.endswith(".ptxas"))
  if not names:
    return
  print("its Mosaic GPU kernels (ptxas; registers are the launch's, before set_max_registers):")
  print("  kernel                                  registers  spill stores  spill loads  smem KiB")
  for name in names:
    with open(os.path.join(dump, f"{name}.ptxas")) as f:
      ptxas = f.read()
    registers = re.search(r"Used (\d+) registers", ptxas)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", ptxas)
    smem = ""
    if os.path.exists(os.path.join(dump, f"{name}.resources.txt")):
      with open(os.path.join(dump, f"{name}.resources.txt")) as f:
        found = re.search(r"smem_scratch_bytes=(\d+)", f.read())
      smem = f"{int(found.group(1)) / 1024:.1f}" if found else ""
    print(f"  {name[:40]:40s} {registers.group(1) if registers else '?':>9s} "
          f"{spills.group(1) if spills else '?':>13s} {spills.group(2) if spills else '?':>12s} "
          f"{smem:>9s}")


def main(argv):
  del argv
  jax.config.update("jax_platforms", "cpu")  # The host computes nothing; the GPU is described.
  from gen_jax.parallel import context as parallel_context
  from gen_jax.parallel import targets

  try:
    platform, devices = targets.compile_only_devices(_TARGET.value)
  except targets.TargetError as error:
    raise SystemExit(f"--target: {error}") from error
  # The model picks some kernels and layouts by platform (ops.attention's "auto",
  # quant.projection.one_row_layout): trace them for the device compiled for, not this host.
  if platform == "gpu":
    _answer_cudnn_checks_for_hopper()
  with parallel_context.compiling_for(platform):
    _attention(devices) if _PROGRAM.value == "attention" else _compile(devices)


def _answer_cudnn_checks_for_hopper() -> None:
  """JAX's cuDNN attention checks the compute capability of this host's GPU while tracing (the
  packed layout of ops.attention's impl="cudnn" with segment ids needs Hopper); both GPU targets
  are Hopper (9.0), so answer for them. A private JAX module: only this compile-only tool
  patches it."""
  from jax._src.cudnn import fused_attention_stablehlo as cudnn
  hopper = (9, 0)
  version = lambda capability: tuple(int(x) for x in capability.split("."))
  cudnn.check_compute_capability = lambda capability: hopper >= version(capability)
  cudnn.is_cuda_compute_capability_equal = lambda capability: hopper == version(capability)


def _compile(devices) -> None:
  from gen_jax.parallel import targets
  import jax.numpy as jnp
  from gen_jax import interop, quant
  from gen_jax.models import Transformer, unstack_layers
  from gen_jax.sampling import SamplingParams
  from gen_jax.sampling import jit as sampling_jit
  from gen_jax.sampling.lm import _generate
  import hlo_summary  # benchmarks/, the script's own directory.
  import step_bytes
  if _PROGRAM.value == "train":
    start = time.perf_counter()
    name = _TARGET.value.replace(":", "-") + "_" + _CONFIG.value.replace("/", "_").replace(":", "_") + "".join(
        f"_{s}" for s in _SET.value) + (f"_b{_BATCH_SIZE.value}" if _BATCH_SIZE.value else "")
    with _mosaic_dumps(name) as dump:
      text = _train()
    _write(text, name, start)
    _print_mosaic_kernels(dump)
    computations, entry = hlo_summary.parse(text)
    bandwidth = targets.GPU_BANDWIDTH.get(_TARGET.value)  # A TPU: no data-sheet figure kept here.
    for kind, (moved, kernels) in hlo_summary.traffic_by_kind(computations, entry).items():
      print(f"step: {kind} kernels {kernels}, est. {moved / 2**30:.1f} GiB" + (
          f", {moved / bandwidth * 1e3:.1f} ms at the data sheet's {bandwidth / 1e12:.2f} TB/s"
          if bandwidth else ""))
    print("the step's memory-bound kernels moving the most bytes (GiB in all, executions):")
    kernels = hlo_summary.program_kernels(computations, entry)
    for moved, executions, op, _ in sorted((k for k in kernels if not k[3]),
                                           key=lambda k: -k[0])[:_TOP.value]:
      op_name = re.search(r'op_name="([^"]*)"', op[4])
      print(f"  {moved / 2**30:7.2f} x{executions:<3d} {hlo_summary.display_shape(op[3])[:36]:36s} {op[0][:36]:36s} "
            f"{op_name.group(1)[-60:] if op_name else ''}")
    return
  if _XLA_OPTIONS.value == "none":
    sampling_jit.COMPILER_OPTIONS.clear()
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(devices[:1], ("x",)),
                                       jax.sharding.PartitionSpec())  # Decoding: one device.
  with open(_HF_CONFIG.value) as f:
    config = interop.config_from_hf(json.load(f), source=_HF_CONFIG.value)
  config = dataclasses.replace(config, dtype="bfloat16", param_dtype="bfloat16")
  if _WEIGHTS.value != "bfloat16":
    config = quant.quantized_config(config, {"int8": 8, "int4": 4}[_WEIGHTS.value], 64)
  config, steps_per_check = _parse_variant(config)
  stacked = dataclasses.replace(config, scan_layers=True)
  shapes = jax.eval_shape(lambda: Transformer(stacked).init(
      jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])
  shapes = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, shapes,
                        is_leaf=lambda x: hasattr(x, "unbox"))
  if not config.scan_layers:
    shapes = jax.eval_shape(lambda p: unstack_layers(p, config.num_layers), shapes)
  params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                        shapes)
  ints = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding)
  b = _BATCH.value
  start = time.perf_counter()
  with jax.set_mesh(sharding.mesh):  # Pallas' GPU lowering reads the device from the mesh.
    compiled = _generate.lower(
        Transformer(config), params, ints(b, _PROMPT.value), ints(b), ints(b), rng, ints(),
        ints(1, 1), ints(1), sampling=SamplingParams(temperature=0.0),
        max_new_tokens=_NEW.value, steps_per_check=steps_per_check).compile()
  text = compiled.as_text()
  _write(text, "_".join(filter(None, (
      _TARGET.value.replace(":", "-"), os.path.basename(_HF_CONFIG.value).removesuffix(".json"),
      _WEIGHTS.value, f"b{b}", _VARIANT.value.replace(",", "_"),
      "xla_defaults" if _XLA_OPTIONS.value == "none" else ""))), start)

  must_read = step_bytes.must_read(config, shapes, b, _PROMPT.value + _NEW.value)
  computations, entry = hlo_summary.parse(text)
  token_loop = max(((n, d) for n, d in hlo_summary.loop_bodies(computations, entry) if d == 1),
                   key=lambda nd: hlo_summary.traffic(computations, nd[0]))[0]
  moved = hlo_summary.traffic(computations, token_loop)
  launches = sum(executions for _, executions, _, _ in
                 hlo_summary.program_kernels(computations, token_loop))
  print(f"token loop {token_loop}: est. {moved / 2**20:.1f} MiB per step against "
        f"{must_read / 2**20:.1f} MiB of weights and cache to read: "
        f"{moved / must_read:.2f}x; {launches} kernels per step")


def _write(text: str, name: str, start: float) -> None:
  import hlo_summary  # benchmarks/, the script's own directory.
  os.makedirs(_OUT.value, exist_ok=True)
  path = os.path.join(_OUT.value, f"{name}.txt")
  with open(path, "w") as f:
    f.write(text)
  print(f"{_TARGET.value}: {name} compiled in {time.perf_counter() - start:.1f} s -> {path}")
  print(hlo_summary.summarize(text, top=_TOP.value))


if __name__ == "__main__":
  app.run(main)
