"""XLA's int-weight matmul: for a few rows the product is taken per scale group (the codes widened
inside it, no float kernel written), for more rows on the dequantized kernel; both equal x times
the dequantized kernel."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax.quant import formats
from gen_jax.quant.matmul import int_matmul


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("rows", [1, 7, 31, 32, 40])  # Grouped below group_size / 2 = 32.
def test_int_matmul_equals_x_times_the_dequantized_kernel(bits, rows):
  rng = np.random.default_rng(rows)
  w = rng.normal(size=(256, 96)).astype(np.float32)
  qweight, scale = formats.quantize(jnp.asarray(w), bits, 64)
  kernel = np.asarray(formats.dequantize(qweight, scale, bits), np.float64)
  x = rng.normal(size=(rows, 256)).astype(np.float32)
  want = x.astype(np.float64) @ kernel
  got = np.asarray(int_matmul(jnp.asarray(x)[None], qweight, scale, bits, jnp.float32))[0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  in_bf16 = np.asarray(int_matmul(jnp.asarray(x), qweight, scale, bits, jnp.bfloat16), np.float64)
  assert np.linalg.norm(in_bf16 - want) / np.linalg.norm(want) < 1e-2


@pytest.mark.parametrize("rows, writes_the_kernel", [(1, False), (31, False), (32, True)])
def test_only_many_rows_dequantize_the_whole_kernel(rows, writes_the_kernel):
  qweight, scale = formats.quantize(jnp.ones((256, 96)), 8, 64)
  jaxpr = jax.make_jaxpr(lambda x: int_matmul(x, qweight, scale, 8, jnp.bfloat16))(
      jnp.ones((rows, 256)))
  shapes = {tuple(v.aval.shape) for eqn in jaxpr.eqns for v in eqn.outvars}
  assert ((256, 96) in shapes) == writes_the_kernel
