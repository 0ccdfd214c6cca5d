"""ops.attention under a mesh (shard_map, sequence all-gather) equals the unsharded computation."""
import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding

from gen_jax import ops, parallel
from gen_jax.config.common import DEFAULT_LOGICAL_AXIS_RULES
from tests.conftest import tiny_config

B, T, N, K, H = 4, 16, 4, 2, 8


def _inputs(seed=0):
  r = np.random.default_rng(seed)
  q = r.normal(size=(B, T, N, H)).astype(np.float32)
  k = r.normal(size=(B, T, K, H)).astype(np.float32)
  v = r.normal(size=(B, T, K, H)).astype(np.float32)
  # Packed documents whose boundaries fall inside and across the length shards, plus padding.
  seg = np.array([[1] * 5 + [2] * 9 + [0] * 2, [1] * 16, [1] * 3 + [2] * 3 + [3] * 10,
                  [1] * 12 + [0] * 4])
  return q, k, v, seg


def _loss_and_grads(q, k, v, seg, **options):
  def loss(q, k, v):
    out = ops.attention(q, k, v, causal=True, segment_ids=seg, **options)
    return (out * np.cos(np.arange(out.size).reshape(out.shape))).sum(), out
  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  return out, grads


@pytest.mark.parametrize("axes", [
    {"data": 4, "tensor": 2},
    {"sequence": 4, "data": 2},
    {"sequence": 8},
    {"data": 2, "tensor": 2, "sequence": 2},
    {"fsdp": 2, "tensor": 4},  # 4-way heads with 2 kv heads: heads stay whole.
])
@pytest.mark.parametrize("sliding_window", [None, 5])
@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_sharded_attention_equals_one_device(axes, sliding_window, impl):
  q, k, v, seg = _inputs()
  expected_out, expected_grads = _loss_and_grads(q, k, v, seg, sliding_window=sliding_window)
  config = tiny_config(**{"mesh.data": 1, **{f"mesh.{a}": s for a, s in axes.items()}})
  mesh = parallel.make_mesh(config.mesh)
  rules = parallel.rules_tuple(DEFAULT_LOGICAL_AXIS_RULES)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    put = lambda x, names: jax.device_put(x, NamedSharding(
        mesh, parallel.context.logical_spec(names, x.shape, mesh)))
    args = (put(q, ("batch", "length", "heads", None)), put(k, ("batch", "length", "kv_heads", None)),
            put(v, ("batch", "length", "kv_heads", None)), put(seg, ("batch", "length")))
    out, grads = jax.jit(lambda *a: _loss_and_grads(*a, sliding_window=sliding_window,
                                                    impl=impl))(*args)
  np.testing.assert_allclose(out, expected_out, atol=1e-5)
  for got, want in zip(grads, expected_grads):
    np.testing.assert_allclose(got, want, atol=1e-5)
  if "sequence" in axes:  # Queries really were split along the length.
    assert "sequence" in str(out.sharding.spec)


def test_logical_spec_drops_axes_that_do_not_divide():
  config = tiny_config(**{"mesh.data": 4, "mesh.tensor": 2})
  mesh = parallel.make_mesh(config.mesh)
  with nn.logical_axis_rules(parallel.rules_tuple(DEFAULT_LOGICAL_AXIS_RULES)):
    spec = parallel.context.logical_spec(("batch", "length", "heads"), (1, 16, 4), mesh)
  assert spec == jax.sharding.PartitionSpec(None, None, ("tensor",))
