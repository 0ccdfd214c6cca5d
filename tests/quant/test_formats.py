"""Group-wise int8/int4 formats: round-to-nearest error at most half a step against a numpy
reference of the scales, exact int4 packing, halved bytes, and config errors naming the field."""
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gen_jax import quant
from gen_jax.config import ConfigError
from gen_jax.quant import formats


@pytest.mark.parametrize("bits,group_size", [(8, 16), (8, 64), (4, 16), (4, 32)])
def test_round_trip_error_is_at_most_half_a_step(bits, group_size):
  rng = np.random.default_rng(0)
  w = rng.standard_t(3, size=(2, 64, 24)).astype(np.float32)  # Heavy tails: uneven groups.
  w[0, :group_size, 0] = 0.0  # An all-zero group: scale 0, codes 0, exact.
  qweight, scale = quant.quantize(jnp.asarray(w), bits, group_size)
  assert qweight.dtype == jnp.int8
  assert qweight.shape == (2, 64 // group_size, formats.stored_group_size(bits, group_size), 24)
  # Independent reference: one scale per group of inputs and output column, absmax / qmax.
  groups = w.reshape(2, 64 // group_size, group_size, 24)
  np.testing.assert_allclose(scale, np.abs(groups).max(axis=2) / (2 ** (bits - 1) - 1), rtol=1e-6)
  back = np.asarray(quant.dequantize(qweight, scale, bits)).reshape(groups.shape)
  step = np.asarray(scale)[:, :, None, :]
  assert np.all(np.abs(back - groups) <= step / 2 * (1 + 1e-5) + 1e-7)
  assert np.all(back[0, 0, :, 0] == 0.0)
  codes = back / np.where(step == 0, 1, step)
  assert np.abs(codes).max() <= 2 ** (bits - 1) - 1 + 1e-4
  assert np.abs(codes).max() >= 2 ** (bits - 1) - 1 - 1e-4  # The group's absmax is a code.


def test_values_on_the_grid_round_trip_exactly():
  codes = np.random.default_rng(1).integers(-7, 8, size=(4, 8, 5))  # [G, g, out] in int4 range.
  codes[:, 0, :] = 7  # absmax 7 * scale in every group and column, so the grid is recovered.
  scale = np.random.default_rng(2).uniform(0.5, 2, size=(4, 1, 5)).astype(np.float32)
  w = (codes * scale).reshape(32, 5)
  qweight, got_scale = quant.quantize(jnp.asarray(w), 4, 8)
  np.testing.assert_array_equal(quant.unpack_int4(qweight), codes)
  np.testing.assert_allclose(got_scale, scale[:, 0], rtol=1e-6)


def test_int4_packing_is_exact_and_has_the_documented_layout():
  low, high = np.meshgrid(np.arange(-8, 8), np.arange(-8, 8), indexing="ij")
  codes = np.concatenate([low.reshape(1, -1), high.reshape(1, -1)], axis=0).astype(np.int8)
  packed = quant.pack_int4(jnp.asarray(codes[None]))  # [1, 1, 256]: every (low, high) pair.
  assert packed.shape == (1, 1, 256) and packed.dtype == jnp.int8
  np.testing.assert_array_equal(quant.unpack_int4(packed)[0], codes)
  as_bytes = np.asarray(packed).view(np.uint8)[0, 0]
  np.testing.assert_array_equal(as_bytes, (low.ravel() & 0xF) | ((high.ravel() & 0xF) << 4))


def test_int4_takes_half_the_bytes_of_int8():
  w = jnp.ones((256, 64))
  int8, _ = quant.quantize(w, 8, 64)
  int4, _ = quant.quantize(w, 4, 64)
  assert int8.nbytes == 256 * 64 and int4.nbytes == 256 * 64 // 2


def _model_config(**fields):
  base = dict(embed_dim=64, num_heads=4, head_dim=16, mlp_dim=192, num_experts=0, weight_bits=4,
              weight_group_size=32, weight_matmul_impl="xla")
  return ml_collections.ConfigDict({**base, **fields})


@pytest.mark.parametrize("fields,message", [
    ({"weight_bits": 3}, r"model.weight_bits: 3 is not one of \(0, 8, 4\)"),
    ({"weight_group_size": 0}, r"model.weight_group_size: must be positive, got 0"),
    ({"weight_group_size": 3, "mlp_dim": 192, "embed_dim": 63},
     r"model.weight_group_size: must be even for int4"),
    ({"weight_group_size": 128}, r"model.weight_group_size: 128 does not divide the input size 64 "
                                 r"\(model.embed_dim\)"),
    ({"mlp_dim": 200}, r"model.weight_group_size: 32 does not divide the input size 200 "
                       r"\(model.mlp_dim\)"),
    ({"weight_matmul_impl": "triton"},
     r"model.weight_matmul_impl: 'triton' is not one of \('xla', 'pallas', 'auto'\)"),
])
def test_bad_quantization_fields_are_named(fields, message):
  with pytest.raises(ConfigError, match=message):
    quant.check_weight_quantization(_model_config(**fields))


def test_float_weights_ignore_the_group_size_divisibility():
  quant.check_weight_quantization(
      _model_config(weight_bits=0, weight_group_size=100, num_experts=4))
