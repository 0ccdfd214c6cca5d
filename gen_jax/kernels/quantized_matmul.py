"""Weight-only quantized matmul for GPUs in Pallas' Triton dialect: x @ dequantize(qweight, scale)
with the dequantization in registers, so the weights cross memory once, as int8 or packed int4.

XLA:GPU does not fuse `gen_jax.quant.formats.dequantize` into its matmuls: on an H200 (2026-12-04,
docs/BENCHMARKS.md) every decoding step wrote and reread a bf16 copy of each layer's weights, and
int8/int4 decoded 0.73-0.90x as fast as bf16 at batch 1. Here each program owns a tile of output
columns and a share of the scale groups; per group it loads the int8 codes [group, block_n] (int4:
[group / 2, block_n] bytes, two codes each), widens them to the compute dtype, multiplies by the
x tile in float32 and scales the [block_m, block_n] partial by that group's scales. Scaling the
partial rather than the weights is the same sum (scale is constant over a group) with one multiply
per output instead of one per weight.

Decoding multiplies few rows (x is [b, in] for b sequences), so a grid over rows and output
columns alone would leave most of a GPU idle (the 1b preset's [2048, 2048] projection in tiles of
128 columns is 16 programs for 132 multiprocessors): the scale groups are split `splits` ways (split-
K) and the float32 partial sums added by XLA afterwards, a [splits, m, out] read that is small
next to the weights.

Layouts are gen_jax.quant.formats': qweight [G, g, out] int8 codes, or [G, g / 2, out] for int4
with codes 0 .. g/2 - 1 of a group in the low nibbles and g/2 .. g - 1 in the high ones; scale
[G, out]. Letters: m rows of x, G groups, g group size, n = out.

The product is differentiable in x and scale (a custom VJP whose backward runs in XLA: QLoRA
trains adapters through frozen int weights, and needs dx). Being a custom VJP also lets the
kernel sit in a flax nn.scan body under jax 0.11, whose pallas_call is never dead-code eliminated,
which flax's scan requires of everything its broadcast outputs do not use.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from gen_jax.quant import formats

_MIN_BLOCK = 16  # tl.dot needs every matmul dimension to be at least 16.
_TARGET_PROGRAMS = 264  # Two programs per multiprocessor of an H100/H200 (132 SMs).


def _largest_power_of_two_dividing(n: int, limit: int) -> int:
  block = 1
  while block * 2 <= limit and n % (block * 2) == 0:
    block *= 2
  return block


def plan(m: int, groups: int, group_size: int, out: int, bits: int, block_m: int | None = None,
         block_n: int | None = None, splits: int | None = None) -> tuple[int, int, int]:
  """(block_m, block_n, splits) for x [m, G * g] and an [out]-column weight; raises ValueError
  naming what the kernel cannot tile (the caller may then use the XLA path)."""
  stored = group_size // 2 if bits == 4 else group_size
  if stored < _MIN_BLOCK or stored & (stored - 1):
    raise ValueError(f"the Pallas quantized matmul needs a power-of-two group size with at least "
                     f"{_MIN_BLOCK} stored rows per group, got group size {group_size} at "
                     f"{bits} bits")
  block_n = block_n or _largest_power_of_two_dividing(out, 128)
  if block_n < _MIN_BLOCK or out % block_n or block_n & (block_n - 1):
    raise ValueError(f"the Pallas quantized matmul tiles output columns by a power of two >= "
                     f"{_MIN_BLOCK} dividing them; {out} columns, block_n {block_n}")
  block_m = block_m or min(64, max(_MIN_BLOCK, pl.next_power_of_2(m)))
  if block_m < _MIN_BLOCK or block_m & (block_m - 1):
    raise ValueError(f"block_m must be a power of two >= {_MIN_BLOCK}, got {block_m}")
  programs = -(-m // block_m) * (out // block_n)
  splits = splits or max(1, min(groups, _TARGET_PROGRAMS // programs))
  if not 1 <= splits <= groups:
    raise ValueError(f"splits must be in [1, {groups}] (the scale groups), got {splits}")
  return block_m, block_n, splits


def quantized_matmul(x: jax.Array, qweight: jax.Array, scale: jax.Array, *, bits: int,
                     block_m: int | None = None, block_n: int | None = None,
                     splits: int | None = None, interpret: bool = False) -> jax.Array:
  """x [m, G * g] @ dequantize(qweight, scale) -> [m, out] in x's dtype, accumulated in float32.

  Args:
    x: [m, in] activations in the compute dtype.
    qweight: [G, g, out] int8 codes (bits 8) or [G, g / 2, out] packed bytes (bits 4).
    scale: [G, out] per-group scales.
    bits: 8 or 4.
    block_m, block_n, splits: tiles of rows and output columns and the split of the groups; None
      picks them (`plan`).
    interpret: run in the Pallas interpreter (any backend; how the tests run it on a CPU).
  """
  m, in_size = x.shape
  groups, stored, out = qweight.shape
  group_size = stored * 2 if bits == 4 else stored
  if bits not in (4, 8):
    raise ValueError(f"bits must be 8 or 4, got {bits}")
  if in_size != groups * group_size or scale.shape != (groups, out):
    raise ValueError(f"x [m, {in_size}], qweight {qweight.shape} ({bits} bits) and scale "
                     f"{scale.shape} do not describe one [{groups} x {group_size}, {out}] kernel")
  tiles = plan(m, groups, group_size, out, bits, block_m, block_n, splits)
  return _matmul(x, qweight, scale, (bits, *tiles, interpret))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _matmul(x, qweight, scale, options):
  return _forward(x, qweight, scale, *options)


def _matmul_forward(x, qweight, scale, options):
  return _forward(x, qweight, scale, *options), (x, qweight, scale)


def _matmul_backward(options, residuals, dy):
  """dx = dy W^T and dscale[G, o] = sum over the group's rows of x * code * dy, in XLA (float32);
  the int codes get no gradient."""
  x, qweight, scale = residuals
  bits = options[0]
  dy = dy.astype(jnp.float32)
  dx = dy @ formats.dequantize(qweight, scale, bits, jnp.float32).T
  codes = formats.unpack_int4(qweight) if bits == 4 else qweight  # [G, g, out]
  groups, group_size, _ = codes.shape
  x_groups = x.astype(jnp.float32).reshape(x.shape[0], groups, group_size)
  dscale = jnp.einsum("mgi,gio,mo->go", x_groups, codes.astype(jnp.float32), dy)
  return dx.astype(x.dtype), None, dscale.astype(scale.dtype)


_matmul.defvjp(_matmul_forward, _matmul_backward)


def _forward(x, qweight, scale, bits, block_m, block_n, splits, interpret):
  """The kernel's product, for tiles from `plan`."""
  m, in_size = x.shape
  groups, stored, out = qweight.shape
  group_size = stored * 2 if bits == 4 else stored
  padded_m = -(-m // block_m) * block_m
  x_padded = jnp.pad(x, ((0, padded_m - m), (0, 0)))  # Rows only: the weights are never copied.
  per_split = -(-groups // splits)
  partials = pl.pallas_call(
      functools.partial(_kernel, bits=bits, group_size=group_size, groups=groups,
                        per_split=per_split),
      grid=(padded_m // block_m, out // block_n, splits),
      in_specs=[pl.BlockSpec((block_m, in_size), lambda i, j, s: (i, 0)),
                pl.BlockSpec((groups, stored, block_n), lambda i, j, s: (0, 0, j)),
                pl.BlockSpec((groups, block_n), lambda i, j, s: (0, j))],
      out_specs=pl.BlockSpec((None, block_m, block_n), lambda i, j, s: (s, i, j)),
      out_shape=jax.ShapeDtypeStruct((splits, padded_m, out), jnp.float32),
      compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=3),
      interpret=interpret,
      name=f"quantized_matmul_int{bits}",
  )(x_padded, qweight, scale)
  return partials.sum(axis=0)[:m].astype(x.dtype)


def _kernel(x_ref, q_ref, scale_ref, out_ref, *, bits, group_size, groups, per_split):
  """One [block_m, block_n] tile of one split's partial sum over its scale groups."""
  first = pl.program_id(2) * per_split
  last = jnp.minimum(first + per_split, groups)
  dtype = x_ref.dtype
  half = group_size // 2

  def add_group(group, acc):
    columns = pl.ds(group * group_size, group_size)
    codes = q_ref[group]  # [g, block_n] int8, or [g / 2, block_n] bytes of two codes
    if bits == 4:
      # Arithmetic shifts on int8 sign-extend each nibble; low nibbles are the group's first half.
      low = lax.shift_right_arithmetic(lax.shift_left(codes, jnp.int8(4)), jnp.int8(4))
      high = lax.shift_right_arithmetic(codes, jnp.int8(4))
      x_low = x_ref[:, pl.ds(group * group_size, half)]
      x_high = x_ref[:, pl.ds(group * group_size + half, half)]
      partial = (jnp.dot(x_low, low.astype(dtype), preferred_element_type=jnp.float32) +
                 jnp.dot(x_high, high.astype(dtype), preferred_element_type=jnp.float32))
    else:
      partial = jnp.dot(x_ref[:, columns], codes.astype(dtype),
                        preferred_element_type=jnp.float32)
    return acc + partial * scale_ref[group].astype(jnp.float32)[None, :]

  acc = jnp.zeros(out_ref.shape, jnp.float32)
  out_ref[...] = lax.fori_loop(first, last, add_group, acc)
