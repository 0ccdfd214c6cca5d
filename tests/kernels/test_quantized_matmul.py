"""The Pallas quantized matmul against the XLA path (dequantize, then dot): int8 and int4, rows
that are not a multiple of the tile, column counts that are not powers of two, every way of
splitting the scale groups (including splits that do not divide them and one group per split),
float32 and bfloat16; the dispatcher's choices and errors; and the Triton lowering.

Interpreted on a CPU; with GEN_JAX_COMPILED_KERNELS=1 on a GPU machine, compiled for it (bf16
tolerances cover the matrix units' float32 mode)."""
import contextlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax.kernels.quantized_matmul import plan, quantized_matmul
from gen_jax.quant import formats
from gen_jax.quant.matmul import AUTO_MAX_ROWS, int_matmul, resolve_impl

COMPILED = os.environ.get("GEN_JAX_COMPILED_KERNELS") == "1"
INTERPRET = not (COMPILED and jax.default_backend() == "gpu")


def _problem(seed, m, in_size, out, bits, group_size, dtype=jnp.float32):
  """x [m, in], the stored (qweight, scale) of a random kernel, and the XLA path's product in
  float32 on the dequantized kernel."""
  r = np.random.default_rng(seed)
  w = jnp.asarray(r.normal(size=(in_size, out)), jnp.float32)
  x = jnp.asarray(r.normal(size=(m, in_size)), dtype)
  qweight, scale = formats.quantize(w, bits, group_size, scale_dtype=dtype)
  reference = x.astype(jnp.float32) @ formats.dequantize(qweight, scale, bits, jnp.float32)
  return x, qweight, scale, reference


def _relative_error(y, reference):
  return float(jnp.linalg.norm(y.astype(jnp.float32) - reference) / jnp.linalg.norm(reference))


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("m,in_size,out,group_size,splits", [
    (1, 576, 192, 64, None),   # SmolLM2's key projection shape, one decoding row, planned splits.
    (3, 256, 96, 32, 1),       # Odd rows, 96 = 32 x 3 columns, one split walks all 8 groups.
    (17, 128, 48, 64, 2),      # Rows past one 16-row tile; a split per group.
    (5, 576, 64, 64, 4),       # 9 groups in 4 splits of 3: the last split holds no group.
    (70, 512, 256, 128, 3),    # Several row tiles; 4 groups in 3 splits of 2.
])
def test_equals_the_dequantized_matmul(bits, m, in_size, out, group_size, splits):
  x, qweight, scale, reference = _problem(m + bits, m, in_size, out, bits, group_size)
  y = quantized_matmul(x, qweight, scale, bits=bits, splits=splits, interpret=INTERPRET)
  assert y.shape == (m, out) and y.dtype == x.dtype
  assert _relative_error(y, reference) < (3e-4 if COMPILED else 1e-6)


@pytest.mark.parametrize("bits", [8, 4])
def test_bfloat16_inputs_accumulate_in_float32(bits):
  x, qweight, scale, reference = _problem(7, 2, 1024, 128, bits, 64, jnp.bfloat16)
  y = quantized_matmul(x, qweight, scale, bits=bits, interpret=INTERPRET)
  assert y.dtype == jnp.bfloat16
  assert _relative_error(y, reference) < 1e-2  # bf16 output rounding; a bf16 sum would be worse.


@pytest.mark.parametrize("bits", [8, 4])
def test_gradients_in_x_and_scale_equal_the_xla_paths(bits):
  """QLoRA trains adapters through int weights: dx (and dscale) flow through the kernel's VJP."""
  x, qweight, scale, _ = _problem(11, 3, 256, 64, bits, 64)
  cotangent = jnp.asarray(np.random.default_rng(0).normal(size=(3, 64)), jnp.float32)
  def loss(impl):
    return lambda x, scale: jnp.sum(int_matmul(x, qweight, scale, bits, jnp.float32, impl)
                                    * cotangent)
  pallas = jax.grad(loss("pallas"), argnums=(0, 1))(x, scale)
  xla = jax.grad(loss("xla"), argnums=(0, 1))(x, scale)
  for ours, theirs in zip(pallas, xla):
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)


def test_plan_fills_the_gpu_with_split_groups_and_names_what_it_cannot_tile():
  # One decoding row of a [2048, 5632] projection: 44 column tiles of 128, groups split 6 ways.
  assert plan(1, 32, 64, 5632, 8) == (16, 128, 6)
  assert plan(512, 32, 64, 5632, 8) == (64, 128, 1)  # Prefill: enough tiles without splitting.
  with pytest.raises(ValueError, match="at least 16 stored rows per group, got group size 16 at 4"):
    plan(1, 4, 16, 64, 4)
  with pytest.raises(ValueError, match="power of two >= 16 dividing them; 40 columns"):
    plan(1, 4, 64, 40, 8)
  with pytest.raises(ValueError, match=r"splits must be in \[1, 4\]"):
    plan(1, 4, 64, 64, 8, splits=5)


def test_dispatcher_runs_the_kernel_only_where_asked_and_equals_xla():
  x, qweight, scale, _ = _problem(3, 4, 256, 64, 4, 64)
  x = x.reshape(2, 2, 256)  # Leading axes are kept.
  xla = int_matmul(x, qweight, scale, 4, jnp.float32, "xla")
  pallas = int_matmul(x, qweight, scale, 4, jnp.float32, "pallas")
  np.testing.assert_allclose(pallas, xla, rtol=1e-5, atol=1e-4)  # Outputs are ~16 in size.
  assert pallas.shape == (2, 2, 64)

  def has_kernel(impl):
    jaxpr = jax.make_jaxpr(lambda x: int_matmul(x, qweight, scale, 4, jnp.float32, impl))(x)
    return "pallas_call" in str(jaxpr)
  assert has_kernel("pallas") and not has_kernel("xla")
  assert not has_kernel("auto")  # 4 rows, under half a group of 64: XLA's per-group product.


def test_auto_takes_the_kernel_for_batched_decoding_rows_on_a_gpu_only():
  assert resolve_impl("auto", 32, 64, "gpu") == "pallas"  # Half a group: 32 decoding rows.
  assert resolve_impl("auto", AUTO_MAX_ROWS, 64, "gpu") == "pallas"
  assert resolve_impl("auto", 31, 64, "gpu") == "xla"  # Fewer: XLA's per-group product.
  assert resolve_impl("auto", 1, 128, "gpu") == "xla"
  assert resolve_impl("auto", AUTO_MAX_ROWS + 1, 64, "gpu") == "xla"  # A prefill or training step.
  assert resolve_impl("auto", 32, 64, "cpu") == resolve_impl("auto", 32, 64, "tpu") == "xla"
  assert resolve_impl("pallas", 10_000, 64, "cpu") == "pallas"
  assert resolve_impl("xla", 32, 64, "gpu") == "xla"


def test_dispatcher_names_the_field_when_the_kernel_cannot_run():
  x, qweight, scale, _ = _problem(4, 1, 256, 40, 8, 64)
  with pytest.raises(ValueError, match="model.weight_matmul_impl: 'pallas' cannot tile this "
                                       "projection: .*40 columns"):
    int_matmul(x, qweight, scale, 8, jnp.float32, "pallas")
  np.testing.assert_allclose(int_matmul(x, qweight, scale, 8, jnp.float32, "auto"),
                             int_matmul(x, qweight, scale, 8, jnp.float32, "xla"))
  with pytest.raises(ValueError, match=r"model.weight_matmul_impl: 'fused' is not one of"):
    int_matmul(x, qweight, scale, 8, jnp.float32, "fused")
  x, qweight, scale, _ = _problem(4, 1, 256, 64, 8, 64)
  mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
  with jax.set_mesh(mesh), pytest.raises(
      ValueError, match="'pallas' runs on unsharded weights, and a mesh of 2 devices is active"):
    int_matmul(x, qweight, scale, 8, jnp.float32, "pallas")


@pytest.mark.parametrize("bits", [8, 4])
def test_lowers_to_one_triton_call(bits):
  """What the interpreter cannot check short of compiling: the kernel lowers for a GPU."""
  stored = 32 if bits == 4 else 64
  shapes = ((1, 2048), (32, stored, 5632), (32, 5632))
  args = [jax.ShapeDtypeStruct(s, d) for s, d in zip(shapes, (jnp.bfloat16, jnp.int8,
                                                               jnp.bfloat16))]
  # From jax 0.11 the Triton lowering reads the target GPU off the abstract mesh off-GPU.
  target = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=jax.sharding.AbstractDevice(
      device_kind="NVIDIA H100", num_cores=None, platform="gpu"))
  context = (contextlib.nullcontext() if jax.default_backend() == "gpu"
             else jax.sharding.use_abstract_mesh(target))
  with context:
    lowered = jax.jit(lambda x, q, s: quantized_matmul(x, q, s, bits=bits)).trace(*args).lower(
        lowering_platforms=("cuda",))
  assert lowered.as_text().count("custom_call @__gpu$xla.gpu.triton") == 1
