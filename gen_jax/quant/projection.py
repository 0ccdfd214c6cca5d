"""The one linear projection of the transformer layers: float weights, or group-wise integer weights
(int8 / int4, `gen_jax.quant.formats`) dequantized inside the jitted matmul (weight-only
quantization as in GPTQ, Frantar et al., 2023, and AWQ, Lin et al., 2024).

Every projection of the attention and MLP blocks is a `Projection`, so switching a model to integer
weights is a config field (`model.weight_bits`), not a second copy of each layer; the param tree is
what changes: {"kernel"} becomes {"qweight", "scale"}. Decoders (KV cache, beam search,
speculative) run a quantized model unchanged.

Either kind of weight can carry a LoRA adapter (Hu et al., 2021, "LoRA: Low-Rank Adaptation of
Large Language Models"): with `lora_rank` r > 0 the projection adds (x A B) * alpha / r, A [in, r]
and B [r, out] float params beside the kernel; B starts at zero, so a fresh adapter changes
nothing. Over int weights this is QLoRA (Dettmers et al., 2023): the adapter path is the same.
Which projections get one, and merging them into the kernels, is `gen_jax.lora`.

With float weights a projection can also record the Gram matrix X^T X of its input (the GPTQ
Hessian, up to a factor) into the `STATS` collection when the caller applies the model with that
collection mutable; otherwise recording costs nothing.
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.layout import Layout, with_layout_constraint

from gen_jax.parallel import context as parallel_context
from gen_jax.quant import formats
from gen_jax.quant.matmul import int_matmul

Dtype = Any
STATS = "quant_stats"  # Collection of calibration statistics: {"input_gram": [in, in] float32}.

# XLA:GPU computes a one-row product whose operands hold fewer elements than this (the row and the
# kernel) as a multiply and a sum over the contracted axis instead of a GEMM (the dot strength
# reduction of its algebraic simplifier, IsMatrixMultiplicationTooSmallForRewriting). Over a kernel
# stored [in, out] that sum runs down the columns, and XLA does not fuse the multiply into it: every
# decoding step writes and rereads a kernel-sized product (seen in XLA:GPU's optimized HLO for an
# H200, compiled without one by benchmarks/aot_hlo.py: 2.3x the bytes of a 135M model's step).
GPU_GEMV_REDUCTION_ELEMENTS = 10_000_000


class Projection(nn.Module):
  """x [..., *in_shape] -> [..., *features]: contracts the trailing axes of x with the leading axes
  of a kernel [*in_shape, *features] (LeCun-normal over those fan-in and fan-out axes).

  Attributes:
    features: output axes, e.g. (num_heads, head_dim) for the query projection.
    axis_names: logical names of the kernel's axes, contracted ones first; their count minus
      len(features) is the number of contracted axes of x.
    weight_bits: 0 for a float kernel; 8 or 4 for qweight [in / g, g (g / 2 for int4), out] int8
      and scale [in / g, out] with in, out the flattened contracted and output sizes, g the
      group size. The first contracted and first output names stand for the flattened axes, so a
      sharding rule splits the same blocks of the weight as it does the float kernel.
    group_size: g, inputs per scale (int weights only).
    matmul_impl: how int weights are multiplied, `gen_jax.quant.matmul.WEIGHT_MATMUL_IMPLS`.
    lora_rank: r, the rank of a low-rank adapter: lora_a [in, r] and lora_b [r, out] in
      param_dtype, named (first contracted name, None) and (None, first output name) so they
      shard like the kernel's flattened axes; 0: no adapter.
    lora_alpha: the adapter's output is scaled by lora_alpha / lora_rank (as in the paper and
      PEFT, so changing the rank does not change the initial update size much).
  """
  features: tuple[int, ...]
  axis_names: tuple[str | None, ...]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  weight_bits: int = 0
  group_size: int = 64
  lora_rank: int = 0
  lora_alpha: float = 16.0
  matmul_impl: str = "xla"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    num_contracted = len(self.axis_names) - len(self.features)
    in_shape = x.shape[x.ndim - num_contracted:]
    batch_shape = x.shape[:x.ndim - num_contracted]
    in_size, out_size = math.prod(in_shape), math.prod(self.features)
    if not self.weight_bits:
      init = nn.initializers.lecun_normal(
          in_axis=tuple(range(num_contracted)),
          out_axis=tuple(range(num_contracted, len(self.axis_names))))
      kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axis_names),
                          (*in_shape, *self.features), self.param_dtype)
      if self.is_mutable_collection(STATS) and not self.is_initializing():
        flat = x.reshape(-1, in_size).astype(jnp.float32)  # [tokens, in]
        gram = jnp.matmul(flat.T, flat, precision=jax.lax.Precision.HIGHEST)
        self.sow(STATS, "input_gram", gram, init_fn=lambda: 0.0, reduce_fn=jnp.add)
      inputs, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
      kernel = one_row_layout(kernel.reshape(in_size, out_size), x.size // in_size)
      y = jnp.matmul(inputs.reshape(-1, in_size), kernel)
      y = y.reshape(*batch_shape, *self.features)
      return y + self._adapter(x, num_contracted) if self.lora_rank else y
    if in_size % self.group_size:
      raise ValueError(f"model.weight_group_size: {self.group_size} does not divide the input "
                       f"size {in_size} of projection {self.name!r}")
    groups = in_size // self.group_size
    in_name, out_name = self.axis_names[0], self.axis_names[num_contracted]
    qweight = self.param(
        "qweight", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                (in_name, None, out_name)),
        (groups, formats.stored_group_size(self.weight_bits, self.group_size), out_size), jnp.int8)
    scale = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (in_name, out_name)),
        (groups, out_size), self.param_dtype)
    # Dequantized inside the jitted computation that runs the dot (the float kernel is never a
    # parameter): by XLA, which writes one layer's float kernel to memory first, or by the Pallas
    # kernel, which widens the codes in registers (gen_jax.quant.matmul).
    flat = x.reshape(*batch_shape, in_size)
    y = int_matmul(flat, qweight, scale, self.weight_bits, self.dtype, self.matmul_impl)
    y = y.reshape(*batch_shape, *self.features)
    return y + self._adapter(x, num_contracted) if self.lora_rank else y

  def _adapter(self, x: jax.Array, num_contracted: int) -> jax.Array:
    """The LoRA update (x A B) * alpha / r of x [..., *in_shape] -> [..., *features], in the
    compute dtype."""
    batch_shape, in_shape = x.shape[:x.ndim - num_contracted], x.shape[x.ndim - num_contracted:]
    in_size, out_size = math.prod(in_shape), math.prod(self.features)
    in_name, out_name = self.axis_names[0], self.axis_names[num_contracted]
    # PEFT's init: A is kaiming-uniform with a = sqrt(5), i.e. uniform(+-1 / sqrt(in)); B is zero,
    # so training starts from the base model, and B gets a gradient at once since A is not zero.
    a_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
    lora_a = self.param("lora_a", nn.with_logical_partitioning(a_init, (in_name, None)),
                        (in_size, self.lora_rank), self.param_dtype)
    lora_b = self.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                               (None, out_name)),
                        (self.lora_rank, out_size), self.param_dtype)
    flat = x.reshape(*batch_shape, in_size).astype(self.dtype)  # [..., in]
    # Scaling the rank-r intermediate rather than the output: r multiplies instead of out.
    low = jnp.matmul(flat, lora_a.astype(self.dtype)) * (self.lora_alpha / self.lora_rank)
    update = jnp.matmul(low, lora_b.astype(self.dtype))  # [..., out]
    return update.reshape(*batch_shape, *self.features)


def one_row_layout(kernel: jax.Array, rows: int, platform: str | None = None) -> jax.Array:
  """kernel [in, out] as the product with `rows` rows should read it: on a GPU (`platform`, default
  the target platform, `parallel.context.target_platform`), for one row and a kernel XLA reduces
  rather than multiplies as a GEMM (GPU_GEMV_REDUCTION_ELEMENTS), laid out with the contracted
  axis minor, so that the sum runs along rows and takes the multiply into its kernel. In a decoding loop the relayout of a weight
  happens once per call, outside the loop; elsewhere the kernel is returned as it is (XLA:CPU
  runs slower with the constraint)."""
  in_size, out_size = kernel.shape
  if ((platform or parallel_context.target_platform()) != "gpu" or rows != 1
      or in_size * out_size + in_size >= GPU_GEMV_REDUCTION_ELEMENTS):
    return kernel
  return with_layout_constraint(kernel, Layout(major_to_minor=(1, 0)))
