"""Mesh construction: per-slice and across-slice axis sizes, and errors that name the field."""
import dataclasses

import pytest

from gen_jax import parallel
from gen_jax.config import ConfigError
from tests.conftest import tiny_config


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  """Stands in for a device of a multi-slice job: only what mesh construction reads."""
  id: int
  slice_index: int
  process_index: int = 0
  platform: str = "cpu"
  device_kind: str = "fake"


TWO_SLICES = [FakeDevice(i, slice_index=i // 4) for i in range(8)]


def test_slices_are_data_parallel_replicas_by_default():
  config = tiny_config(**{"mesh.data": 1, "mesh.fsdp": -1})
  array = parallel.mesh.device_array(config.mesh, TWO_SLICES)
  assert array.shape == (2, 4, 1, 1, 1)  # (data, fsdp, tensor, sequence, expert)
  assert [{d.slice_index for d in array[i].ravel()} for i in range(2)] == [{0}, {1}]


def test_an_axis_can_span_slices():
  config = tiny_config(**{"mesh.data": 1, "mesh.fsdp": -1, "mesh.across_slices.data": 1,
                          "mesh.across_slices.fsdp": 2})
  array = parallel.mesh.device_array(config.mesh, TWO_SLICES)
  assert array.shape == (1, 8, 1, 1, 1)
  assert [d.slice_index for d in array.ravel()] == [0] * 4 + [1] * 4  # Each slice a block of fsdp.
  shapes = parallel.mesh_shape(config.mesh, 8, num_slices=2)
  assert shapes["per_slice"]["fsdp"] == 4 and shapes["total"]["fsdp"] == 8


def test_sizes_that_do_not_fit_the_slices_name_the_field():
  config = tiny_config(**{"mesh.data": 1, "mesh.fsdp": -1, "mesh.across_slices.data": 3})
  with pytest.raises(ConfigError, match=r"mesh.across_slices: axis sizes .* use 3 slices but 2"):
    parallel.mesh.device_array(config.mesh, TWO_SLICES)
  config = tiny_config(**{"mesh.across_slices.tensor": 0})
  with pytest.raises(ConfigError, match="mesh.across_slices.tensor: must be positive or -1"):
    from gen_jax.train.loop import validate
    validate(config)


def test_one_slice_ignores_the_across_slice_fill():
  config = tiny_config(**{"mesh.data": 2, "mesh.fsdp": 4})
  assert parallel.make_mesh(config.mesh).shape["fsdp"] == 4
