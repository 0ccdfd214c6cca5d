"""The matmul of an integer-weight projection: x @ dequantize(qweight, scale), by XLA or by the
Pallas kernel that dequantizes in registers (`gen_jax.kernels.quantized_matmul`).

  xla     dequantize, then XLA's dot. XLA:CPU and XLA:GPU write the layer's dequantized kernel to
          memory before the dot (seen on an H200, docs/BENCHMARKS.md), so int weights save memory
          but not time; any backend, any mesh.
  pallas  the Triton kernel: compiled on a GPU, interpreted elsewhere (exact but slow; for tests).
          Unsharded weights only: a Pallas call is opaque to XLA's partitioner.
  auto    pallas on a GPU without a multi-device mesh, for products of at most AUTO_MAX_ROWS rows
          (decoding steps) that the kernel can tile; else xla.
"""
import jax

from gen_jax.parallel import context as parallel_context
from gen_jax.quant import formats
from gen_jax.quant.formats import WEIGHT_MATMUL_IMPLS

# Rows of x up to which auto takes the kernel: decoding a batch reads every weight once per few
# rows, so bytes decide and the kernel's int reads win; a prefill or training step of thousands of
# rows is compute-bound, where cuBLAS on the dequantized kernel beats a loop over scale groups.
AUTO_MAX_ROWS = 256


def int_matmul(x: jax.Array, qweight: jax.Array, scale: jax.Array, bits: int, dtype,
               impl: str = "xla") -> jax.Array:
  """x [..., G * g] @ dequantize(qweight [G, g or g / 2, out], scale [G, out]) -> [..., out] in
  `dtype` (x is cast to it first). Raises ValueError naming model.weight_matmul_impl when 'pallas'
  cannot run here."""
  if impl not in WEIGHT_MATMUL_IMPLS:
    raise ValueError(f"model.weight_matmul_impl: {impl!r} is not one of {WEIGHT_MATMUL_IMPLS}")
  *batch_shape, in_size = x.shape
  x = x.astype(dtype)
  rows = x.size // in_size
  if resolve_impl(impl, rows) == "pallas":
    kernel_error = _kernel_error(qweight, bits, rows)
    if impl == "pallas" and kernel_error:
      raise ValueError(f"model.weight_matmul_impl: 'pallas' {kernel_error}; use 'xla' or 'auto'")
    if not kernel_error:  # auto falls back to XLA where the kernel cannot tile the shapes.
      from gen_jax.kernels.quantized_matmul import quantized_matmul  # Loads Pallas' Triton lowering.
      y = quantized_matmul(x.reshape(-1, in_size), qweight, scale, bits=bits,
                           interpret=jax.default_backend() != "gpu")
      return y.reshape(*batch_shape, y.shape[-1])
  kernel = formats.dequantize(qweight, scale, bits, dtype)  # [in, out]
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def resolve_impl(impl: str, rows: int, platform: str | None = None) -> str:
  """'xla' or 'pallas': what `impl` stands for with x of `rows` rows on `platform` (default: JAX's
  default backend), before checking that the kernel can tile the shapes."""
  if impl != "auto":
    return impl
  platform = platform or jax.default_backend()
  return "pallas" if platform == "gpu" and rows <= AUTO_MAX_ROWS else "xla"


def _kernel_error(qweight, bits, rows) -> str:
  """Why the Pallas kernel cannot compute this product here ('' when it can)."""
  if jax.default_backend() == "tpu":
    return "has no TPU kernel (the Triton kernel is for GPUs)"
  mesh = parallel_context.active_mesh()
  if mesh is not None:
    return f"runs on unsharded weights, and a mesh of {mesh.size} devices is active"
  from gen_jax.kernels.quantized_matmul import plan
  groups, stored, out = qweight.shape
  try:
    plan(rows, groups, stored * 2 if bits == 4 else stored, out, bits)
  except ValueError as error:
    return f"cannot tile this projection: {error}"
  return ""
