"""The matmul of an integer-weight projection: x @ dequantize(qweight, scale), by XLA or by the
Pallas kernel that dequantizes in registers (`gen_jax.kernels.quantized_matmul`).

  xla     by XLA, on any backend and mesh. For a few rows (decoding: fewer than half a scale
          group), one product per scale group, sum_G scale_G * (x_G @ codes_G): XLA widens the
          codes inside the product's kernel and writes only [rows, G, out] partial sums, which
          the scales weigh; for more rows, dequantize then one dot (XLA writes the layer's
          dequantized kernel to memory first: the partial sums would outweigh it).
  pallas  the Triton kernel: compiled on a GPU, interpreted elsewhere (exact but slow; for tests).
          Unsharded weights only: a Pallas call is opaque to XLA's partitioner.
  auto    on a GPU without a multi-device mesh, for products of half a scale group to
          AUTO_MAX_ROWS rows (batched decoding steps) that the kernel can tile, pallas; else xla.
          (Fewer rows: XLA's per-group product reads the codes once and writes little; the
          kernel's partial sums are padded to 16 rows. For an H200, by benchmarks/aot_hlo.py's
          estimate of the 1.1B decoding step over the bytes it must read: one row, int8 1.12x by
          xla, 1.48x by pallas; 32 rows, 4.53x by xla, which writes the dequantized kernels, 2.08x
          by pallas.)
"""
import jax
import jax.numpy as jnp

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
  groups, stored, out = qweight.shape
  group_size = stored * 2 if bits == 4 else stored
  if resolve_impl(impl, rows, group_size) == "pallas":
    kernel_error = _kernel_error(qweight, bits, rows)
    if impl == "pallas" and kernel_error:
      raise ValueError(f"model.weight_matmul_impl: 'pallas' {kernel_error}; use 'xla' or 'auto'")
    if not kernel_error:  # auto falls back to XLA where the kernel cannot tile the shapes.
      from gen_jax.kernels.quantized_matmul import quantized_matmul  # Loads Pallas' Triton lowering.
      y = quantized_matmul(x.reshape(-1, in_size), qweight, scale, bits=bits,
                           interpret=parallel_context.target_platform() != "gpu")
      return y.reshape(*batch_shape, y.shape[-1])
  if rows < group_size // 2:  # Partial sums (4 bytes per row, group, output) < the kernel's bytes.
    codes = formats.unpack_int4(qweight) if bits == 4 else qweight  # [G, g, out]
    # In float32 (XLA:CPU has no bf16 x bf16 -> f32 batched dot); XLA:GPU widens in registers.
    partial = jnp.einsum("rGg,Ggo->rGo", x.reshape(rows, groups, group_size).astype(jnp.float32),
                         codes.astype(jnp.float32))
    y = (partial * scale.astype(jnp.float32)).sum(axis=1).astype(dtype)  # [rows, out]
    return y.reshape(*batch_shape, out)
  kernel = formats.dequantize(qweight, scale, bits, dtype)  # [in, out]
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def resolve_impl(impl: str, rows: int, group_size: int, platform: str | None = None) -> str:
  """'xla' or 'pallas': what `impl` stands for with x of `rows` rows and weights of `group_size`
  inputs per scale on `platform` (default: the target platform,
  `parallel.context.target_platform`), before checking that the kernel can tile the shapes."""
  if impl != "auto":
    return impl
  platform = platform or parallel_context.target_platform()
  return ("pallas" if platform == "gpu" and group_size // 2 <= rows <= AUTO_MAX_ROWS
          else "xla")


def _kernel_error(qweight, bits, rows) -> str:
  """Why the Pallas kernel cannot compute this product here ('' when it can)."""
  if parallel_context.target_platform() == "tpu":
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
