"""GPTQ (Frantar et al., 2023, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", Algorithm 1): quantize a layer's weight one input at a time, spreading each rounding
error onto the inputs not yet quantized so that the layer's output on calibration data, X W, moves
as little as possible.

With H = X^T X + damping and U the upper Cholesky factor of H^-1 (U^T U = H^-1), input i is rounded
to the grid, its error e_i = (w_i - q_i) / U[i, i] is recorded, and every later input j moves by
-U[i, j] e_i. Inputs go in blocks of one quantization group ("lazy batch" updates): inside a block
the updates touch only the block's rows; the rest of W gets them in one matmul per block. Each
group's scale is taken from the group's weights as updated when the group starts, as in the paper's
grouped variant. Inputs with zero activation on the calibration data (H[i, i] = 0) are dead: their
weights are set to zero, as in the reference implementation. Optionally (`act_order`) inputs go in
order of decreasing activation, with static group scales, as the reference implementation's
--act-order --static-groups.

Here W is [in, out] (gen_jax kernels contract their leading axes), so the paper's "columns" are our
rows.
"""
import functools

import jax
import jax.numpy as jnp

from gen_jax.quant import formats


def inverse_hessian_factor(gram: jax.Array, damping: float) -> tuple[jax.Array, jax.Array]:
  """(U [in, in] upper with U^T U = (H + damping * mean(diag H) I)^-1, dead [in] bool).

  Args:
    gram: [in, in] X^T X of the layer's input over the calibration tokens (any positive factor:
      the damping is relative, and GPTQ's result does not depend on the scale of H).
    damping: the paper's percdamp, 0.01.
  """
  gram = gram.astype(jnp.float32)
  diag = jnp.diagonal(gram)
  dead = diag == 0
  hessian = gram + jnp.diag(jnp.where(dead, 1.0, 0.0))
  hessian = hessian + damping * jnp.mean(jnp.diagonal(hessian)) * jnp.eye(gram.shape[0])
  lower = jnp.linalg.cholesky(hessian)
  inverse = jax.scipy.linalg.cho_solve((lower, True), jnp.eye(gram.shape[0]))
  return jnp.linalg.cholesky(inverse).T, dead


@functools.partial(jax.jit, static_argnames=("bits", "group_size", "scale_dtype", "act_order"))
def gptq_quantize(w: jax.Array, gram: jax.Array, *, bits: int, group_size: int,
                  damping: float = 0.01, scale_dtype=jnp.float32, act_order: bool = False):
  """GPTQ of one kernel.

  Args:
    w: [in, out] float kernel.
    gram: [in, in] X^T X of the kernel's input on calibration data.
    bits, group_size, scale_dtype: the format (`formats.quantize`); group_size divides in.
    damping: added to H's diagonal, relative to its mean.
    act_order: quantize inputs in order of decreasing H[i, i] (the reference implementation's
      act-order heuristic: the inputs with the largest activations go first, while most inputs
      are still free to absorb their error). Each group's scale is then fixed up front from the
      original weights ("static groups"), so a stored group stays a run of consecutive inputs.
  Returns:
    (qweight, scale) in the layout of `formats.quantize`.
  """
  in_dim, out_dim = w.shape
  num_groups = in_dim // group_size
  gram = gram.astype(jnp.float32)
  w = jnp.where((jnp.diagonal(gram) == 0)[:, None], 0.0, w.astype(jnp.float32))
  groups = w.reshape(num_groups, group_size, out_dim)
  static_scales = formats.group_scales(groups, bits, scale_dtype)  # [G, out]
  order = jnp.argsort(-jnp.diagonal(gram)) if act_order else jnp.arange(in_dim)
  factor, _ = inverse_hessian_factor(gram[order][:, order], damping)
  w = w[order]  # Rows in the order they are quantized.

  def quantize_block(block, carry):
    w, codes, scales = carry
    start = block * group_size
    w_block = jax.lax.dynamic_slice_in_dim(w, start, group_size)  # [g, out], fully updated.
    factor_rows = jax.lax.dynamic_slice_in_dim(factor, start, group_size)  # [g, in]
    factor_block = jax.lax.dynamic_slice_in_dim(factor_rows, start, group_size, axis=1)  # [g, g]
    if act_order:
      row_scales = static_scales[jax.lax.dynamic_slice_in_dim(order, start, group_size)
                                 // group_size]  # [g, out]: each row its own group's scale.
    else:  # The block is one group: its scale comes from its weights as updated so far.
      scale = formats.group_scales(w_block, bits, scale_dtype)  # [out]
      scales = jax.lax.dynamic_update_slice_in_dim(scales, scale[None], block, axis=0)
      row_scales = jnp.broadcast_to(scale, (group_size, out_dim))

    def quantize_row(row, inner):
      w_block, block_codes, errors = inner
      code = formats.round_to_grid(w_block[row], row_scales[row], bits)  # [out]
      error = (w_block[row] - code * row_scales[row].astype(jnp.float32)) / factor_block[row, row]
      # U is upper triangular: rows before `row` get nothing; row itself is done already.
      w_block = w_block - factor_block[row][:, None] * error[None, :]
      return w_block, block_codes.at[row].set(code), errors.at[row].set(error)

    zeros = jnp.zeros((group_size, out_dim), jnp.float32)
    _, block_codes, errors = jax.lax.fori_loop(0, group_size, quantize_row,
                                               (w_block, zeros, zeros))
    # The block's errors reach every later input at once; earlier rows get zeros (U upper).
    w = w - jnp.matmul(factor_rows.T, errors, precision=jax.lax.Precision.HIGHEST)
    codes = jax.lax.dynamic_update_slice_in_dim(codes, block_codes, start, axis=0)
    return w, codes, scales

  codes = jnp.zeros((in_dim, out_dim), jnp.float32)
  _, codes, scales = jax.lax.fori_loop(0, num_groups, quantize_block, (w, codes, static_scales))
  codes = jnp.zeros_like(codes).at[order].set(codes)  # Back to the inputs' own order.
  return formats.encode(codes.astype(jnp.int8).reshape(groups.shape), bits), scales
