"""On a GPU, a one-row product with a small kernel reads the kernel with its contracted axis minor
(XLA:GPU sums such products down the contracted axis instead of running a GEMM, and fuses the
multiply into that sum only along rows); nowhere else is the kernel's layout constrained."""
import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.quant.projection import GPU_GEMV_REDUCTION_ELEMENTS, one_row_layout


def _constrained(kernel, rows, platform):
  jaxpr = jax.make_jaxpr(lambda k: one_row_layout(k, rows, platform))(kernel)
  return [str(e.params["layout"]) for e in jaxpr.eqns if e.primitive.name == "layout_constraint"]


def test_only_one_row_products_with_small_kernels_on_a_gpu_are_relaid():
  small = jax.ShapeDtypeStruct((2048, 2048), jnp.bfloat16)
  side = int(np.sqrt(GPU_GEMV_REDUCTION_ELEMENTS)) + 1
  large = jax.ShapeDtypeStruct((side, side), jnp.bfloat16)
  (layout,) = _constrained(small, 1, "gpu")
  assert "major_to_minor=(1, 0)" in layout  # The contracted axis (0) minor.
  assert _constrained(large, 1, "gpu") == []
  assert _constrained(small, 2, "gpu") == []
  assert _constrained(small, 1, "cpu") == []


def test_the_relaid_kernel_gives_the_same_product():
  rng = np.random.default_rng(0)
  kernel, row = rng.normal(size=(48, 40)).astype(np.float32), rng.normal(size=(1, 48)).astype(
      np.float32)
  got = jax.jit(lambda k, x: x @ one_row_layout(k, 1, "gpu"))(kernel, row)
  np.testing.assert_allclose(got, row @ kernel, rtol=1e-5, atol=1e-5)
