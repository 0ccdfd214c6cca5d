"""Group-wise symmetric integer formats for weight-only quantization (int8, int4 packed in bytes).

The layout follows GPTQ (Frantar et al., 2023, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers") and AWQ (Lin et al., 2024): a kernel is seen as a matrix
[in, out] (its contracted axes flattened into `in`), and every run of `group_size` consecutive
inputs of one output column shares a scale:

  w[i, o] ~= q[i, o] * scale[i // group_size, o],  q an integer in [-qmax, qmax],
  qmax = 2^(bits-1) - 1.

Symmetric rather than asymmetric (no zero point): dequantization is one multiply, which is what a
matmul can fuse into its operand load; int8 and int4 share one code path; 0.0 stays exactly 0;
and the grid never clips (scale = absmax / qmax), so the error of round-to-nearest is at most half
a step, scale / 2, per element. The price is the unused code -8 of int4 and a step sized by the
larger side of each group; with groups of 64-128 inputs that costs little (GPTQ's Table 3).

Stored layout (a param tree holds exactly these):
  qweight: [..., groups, group_size, out] int8, or [..., groups, group_size / 2, out] int8 for int4,
    where byte j of a group holds input j in its low nibble and input j + group_size / 2 in its
    high nibble (two's complement nibbles). The backends differ on a native int4 array: XLA's CPU
    client keeps jnp.int4 one byte per element, so packing by hand is what halves memory.
  scale: [..., groups, out] in the model's param dtype.
"""
import jax
import jax.numpy as jnp

from gen_jax.config.errors import require

WEIGHT_BITS = (0, 8, 4)  # 0: float weights (no quantization).
WEIGHT_MATMUL_IMPLS = ("xla", "pallas", "auto")  # gen_jax.quant.matmul: how int weights multiply.


def qmax(bits: int) -> int:
  """The largest code of the symmetric grid: 127 for int8, 7 for int4."""
  return 2 ** (bits - 1) - 1


def stored_group_size(bits: int, group_size: int) -> int:
  """Bytes per group and output column in `qweight`: int4 packs two codes in a byte."""
  return group_size // 2 if bits == 4 else group_size


def pack_int4(codes: jax.Array) -> jax.Array:
  """[..., group_size, out] int8 codes in [-8, 7] -> [..., group_size / 2, out] int8 bytes."""
  half = codes.shape[-2] // 2
  low, high = codes[..., :half, :], codes[..., half:, :]
  return jnp.bitwise_or(jnp.bitwise_and(low, 0xF), jnp.left_shift(high, 4)).astype(jnp.int8)


def unpack_int4(packed: jax.Array) -> jax.Array:
  """Inverse of pack_int4: [..., group_size / 2, out] int8 -> [..., group_size, out] int8.

  Shifts on int8 are arithmetic, so shifting the low nibble up and back down sign-extends it.
  """
  low = jnp.right_shift(jnp.left_shift(packed, 4), 4)
  high = jnp.right_shift(packed, 4)
  return jnp.concatenate([low, high], axis=-2)


def group_scales(groups: jax.Array, bits: int, scale_dtype) -> jax.Array:
  """[..., group_size, out] float -> [..., out] scales (absmax / qmax), rounded to scale_dtype."""
  absmax = jnp.max(jnp.abs(groups.astype(jnp.float32)), axis=-2)
  return (absmax / qmax(bits)).astype(scale_dtype)


def round_to_grid(w: jax.Array, scale: jax.Array, bits: int) -> jax.Array:
  """The nearest codes (as float32) of w [..., out] on the grid of scale [..., out].

  The stored (rounded) scale is the one divided by, so |w - code * scale| <= scale / 2 holds for
  the scale actually used at dequantization; a zero scale (an all-zero group) gives code 0.
  """
  scale = scale.astype(jnp.float32)
  safe = jnp.where(scale == 0, 1.0, scale)
  return jnp.clip(jnp.round(w.astype(jnp.float32) / safe), -qmax(bits), qmax(bits))


def quantize(w: jax.Array, bits: int, group_size: int, scale_dtype=jnp.float32):
  """Round-to-nearest group-wise quantization.

  Args:
    w: [..., in, out] float kernel (leading axes, e.g. stacked layers, are kept).
    bits: 8 or 4.
    group_size: inputs per scale; must divide `in` (and be even for int4).
    scale_dtype: the dtype scales are stored in (the model's param dtype).
  Returns:
    (qweight [..., in / group_size, stored_group_size, out] int8,
     scale [..., in / group_size, out] in scale_dtype).
  """
  *lead, in_dim, out_dim = w.shape
  groups = w.reshape(*lead, in_dim // group_size, group_size, out_dim)
  scale = group_scales(groups, bits, scale_dtype)  # [..., G, out]
  codes = round_to_grid(groups, scale[..., None, :], bits).astype(jnp.int8)
  return encode(codes, bits), scale


def encode(codes: jax.Array, bits: int) -> jax.Array:
  """[..., G, group_size, out] int8 codes -> the stored qweight (packed for int4)."""
  return pack_int4(codes) if bits == 4 else codes


def dequantize(qweight: jax.Array, scale: jax.Array, bits: int, dtype=jnp.float32) -> jax.Array:
  """The stored (qweight, scale) -> [..., in, out] kernel in `dtype` (code * scale, computed in
  `dtype`, as the quantized projection computes it)."""
  codes = unpack_int4(qweight) if bits == 4 else qweight  # [..., G, group_size, out]
  w = codes.astype(dtype) * scale.astype(dtype)[..., None, :]
  *lead, groups, group_size, out_dim = w.shape
  return w.reshape(*lead, groups * group_size, out_dim)


def check_weight_quantization(model) -> None:
  """Checks model.weight_bits / model.weight_group_size of a transformer's model config (a
  ConfigDict or TransformerConfig); raises ConfigError naming the field."""
  bits, group_size = model.weight_bits, model.weight_group_size
  require(bits in WEIGHT_BITS, "model.weight_bits",
          f"{bits!r} is not one of {WEIGHT_BITS} (0: float weights)")
  require(model.weight_matmul_impl in WEIGHT_MATMUL_IMPLS, "model.weight_matmul_impl",
          f"{model.weight_matmul_impl!r} is not one of {WEIGHT_MATMUL_IMPLS}")
  require(group_size > 0, "model.weight_group_size", f"must be positive, got {group_size}")
  if not bits:
    return
  require(bits != 4 or group_size % 2 == 0, "model.weight_group_size",
          f"must be even for int4 (two codes per byte), got {group_size}")
  inputs = {"model.embed_dim": model.embed_dim,
            "model.num_heads * model.head_dim": model.num_heads * model.head_dim,
            "model.mlp_dim": model.mlp_dim}
  for name, size in inputs.items():
    require(size % group_size == 0, "model.weight_group_size",
            f"{group_size} does not divide the input size {size} ({name}) of a projection")
