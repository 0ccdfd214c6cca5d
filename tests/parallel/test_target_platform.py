"""Traces pick kernels and layouts for the platform they are compiled for: this host's backend, or
the one `compiling_for` names (compiling ahead of time for a device the host lacks)."""
import jax
import jax.numpy as jnp
import pytest

from gen_jax import ops
from gen_jax.parallel import context
from gen_jax.quant.matmul import resolve_impl as int_matmul_impl
from gen_jax.quant.projection import one_row_layout


def test_compiling_for_a_gpu_picks_its_kernels_and_layouts_and_then_restores_the_host():
  host = jax.default_backend()
  assert context.target_platform() == host == "cpu"
  with context.compiling_for("gpu"):
    assert context.target_platform() == "gpu"
    assert ops.resolve_impl("auto") == "pallas"
    assert ops.resolve_impl("auto", cudnn_serves=True) == "cudnn"
    assert ops.pallas_target() == {"backend": "gpu", "interpret": False}
    assert int_matmul_impl("auto", rows=32, group_size=64) == "pallas"
    jaxpr = jax.make_jaxpr(lambda k: one_row_layout(k, 1))(jnp.ones((64, 32)))
    assert [e.primitive.name for e in jaxpr.eqns] == ["layout_constraint"]
    assert jnp.ones(3).sum() == 3  # Eager work still runs on this host.
  assert context.target_platform() == "cpu"
  assert ops.resolve_impl("auto") == "xla"
  assert int_matmul_impl("auto", rows=32, group_size=64) == "xla"
  assert ops.pallas_target() == {"backend": "gpu", "interpret": True}


def test_an_unknown_platform_is_refused_by_name():
  with pytest.raises(ValueError, match="compiling_for: platform must be cpu, gpu or tpu, got 'cuda'"):
    with context.compiling_for("cuda"):
      pass
