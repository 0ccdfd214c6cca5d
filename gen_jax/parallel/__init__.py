"""Meshes, logical-axis shardings and batch placement."""
from gen_jax.parallel import context, distributed, targets
from gen_jax.parallel.mesh import (BATCH_AXES, batch_sharding, data_parallel_size, logical_shardings,
                                   make_mesh, mesh_shape, rules_tuple, shard_batch)

__all__ = [
    "BATCH_AXES",
    "batch_sharding",
    "context",
    "data_parallel_size",
    "distributed",
    "logical_shardings",
    "make_mesh",
    "mesh_shape",
    "rules_tuple",
    "shard_batch",
    "targets",
]
