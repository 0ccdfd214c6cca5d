"""GPTQ: equals a plain numpy transcription of the paper's Algorithm 1 (column by column, no lazy
batches, float64; with and without act-order), beats round-to-nearest on the layer's output error ||X W - X W_q|| when the
inputs are correlated, and is round-to-nearest when they are not."""
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import quant


def _gptq_reference(w, gram, bits, group_size, damping=0.01, act_order=False):
  """Algorithm 1 of Frantar et al. (2023) in the paper's orientation, W [out, in], with the
  reference code's act-order and static groups; returns codes [in, out] and scales
  [in / group_size, out]."""
  qmax = 2 ** (bits - 1) - 1
  weight = w.T.astype(np.float64).copy()
  hessian = gram.astype(np.float64).copy()
  dead = np.diag(hessian) == 0
  hessian[dead, dead] = 1.0
  weight[:, dead] = 0.0
  out_dim, in_dim = weight.shape
  static = np.abs(weight.reshape(out_dim, -1, group_size)).max(axis=2).T / qmax  # [G, out]
  order = np.argsort(-np.diag(gram), kind="stable") if act_order else np.arange(in_dim)
  weight, hessian = weight[:, order], hessian[order][:, order]
  hessian += damping * np.mean(np.diag(hessian)) * np.eye(in_dim)
  hinv = np.linalg.cholesky(np.linalg.inv(hessian)).T  # Upper: hinv.T @ hinv = H^-1.
  codes, scales = np.zeros_like(weight), []
  for i in range(in_dim):
    if act_order:
      scale = static[order[i] // group_size]
    elif i % group_size == 0:
      scale = np.abs(weight[:, i:i + group_size]).max(axis=1) / qmax
      scales.append(scale)
    codes[:, i] = np.clip(np.round(weight[:, i] / np.where(scale == 0, 1, scale)), -qmax, qmax)
    error = (weight[:, i] - codes[:, i] * scale) / hinv[i, i]
    weight[:, i:] -= np.outer(error, hinv[i, i:])
  codes[:, order] = codes.copy()
  return codes.T, static if act_order else np.stack(scales)


def _correlated_inputs(num_tokens=512, in_dim=64, rank=6, seed=0):
  """Activations with a few dominant directions plus a little noise, like a transformer's."""
  rng = np.random.default_rng(seed)
  basis = rng.normal(size=(rank, in_dim))
  x = rng.normal(size=(num_tokens, rank)) @ basis + 0.1 * rng.normal(size=(num_tokens, in_dim))
  x[:, 5] = 0.0  # A dead input: never active in the calibration data.
  return x.astype(np.float32)


def _codes(qweight, bits):
  codes = quant.unpack_int4(qweight) if bits == 4 else qweight
  return np.asarray(codes).reshape(-1, codes.shape[-1])


@pytest.mark.parametrize("bits,group_size,act_order", [(4, 16, False), (8, 32, False),
                                                       (4, 16, True)])
def test_gptq_matches_the_papers_algorithm(bits, group_size, act_order):
  x = _correlated_inputs()
  x[:, 40] *= 30.0  # An outlier feature, which act-order quantizes first.
  w = np.random.default_rng(1).normal(size=(64, 24)).astype(np.float32)
  gram = x.T @ x
  qweight, scale = quant.gptq_quantize(jnp.asarray(w), jnp.asarray(gram), bits=bits,
                                       group_size=group_size, act_order=act_order)
  ref_codes, ref_scales = _gptq_reference(w, gram, bits, group_size, act_order=act_order)
  codes = _codes(qweight, bits)
  # float32 against float64: a code may land on the other side of a rounding boundary.
  assert np.mean(codes == ref_codes) > 0.99
  np.testing.assert_allclose(scale, ref_scales, rtol=2e-3, atol=1e-6)
  ours = np.linalg.norm(x @ (w - np.asarray(quant.dequantize(qweight, scale, bits))))
  ref = np.linalg.norm(x @ (w - np.repeat(ref_scales, group_size, axis=0) * ref_codes))
  assert abs(ours - ref) < 0.02 * ref
  assert np.all(codes[5] == 0)  # The dead input's weights are zeroed.


@pytest.mark.parametrize("bits,group_size,act_order", [(4, 16, False), (4, 64, False),
                                                       (8, 32, False), (4, 16, True)])
def test_gptq_beats_round_to_nearest_on_correlated_inputs(bits, group_size, act_order):
  x = _correlated_inputs(seed=2)
  w = np.random.default_rng(3).normal(size=(64, 48)).astype(np.float32)
  rtn = quant.dequantize(*quant.quantize(jnp.asarray(w), bits, group_size), bits)
  gptq = quant.dequantize(*quant.gptq_quantize(jnp.asarray(w), jnp.asarray(x.T @ x), bits=bits,
                                               group_size=group_size, act_order=act_order), bits)
  rtn_error = np.linalg.norm(x @ (w - np.asarray(rtn)))
  gptq_error = np.linalg.norm(x @ (w - np.asarray(gptq)))
  assert gptq_error < 0.5 * rtn_error, (gptq_error, rtn_error)


def test_gptq_is_round_to_nearest_when_inputs_are_uncorrelated():
  """With H = I the inverse Hessian's factor is diagonal: no error moves to other inputs."""
  w = jnp.asarray(np.random.default_rng(4).normal(size=(64, 24)), jnp.float32)
  for bits in (8, 4):
    qweight, scale = quant.gptq_quantize(w, jnp.eye(64), bits=bits, group_size=16)
    rtn_qweight, rtn_scale = quant.quantize(w, bits, 16)
    np.testing.assert_array_equal(qweight, rtn_qweight)
    np.testing.assert_array_equal(scale, rtn_scale)
