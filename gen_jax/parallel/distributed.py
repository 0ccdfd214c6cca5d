"""Multi-host start-up through JAX's own distributed runtime.

Every host runs the same command. `initialize` connects them before any device is touched, after
which `jax.devices()` lists the devices of all hosts, each host feeds its own slice of every batch
(`data.pipeline` slices by `jax.process_index()`), and Orbax writes and restores checkpoints from
every host into the shared workdir.
"""
import os

import jax

MULTIHOST_MODES = ("auto", "on", "off")

# Variables a multi-host launcher sets: JAX's own, Cloud TPU multislice (Megascale), SLURM, Open MPI.
_COORDINATOR_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")
_PROCESS_COUNT_VARIABLES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES")


def launched_on_several_hosts(env=os.environ) -> bool:
  """Whether the environment says this process is one of several (Cloud TPU VMs, SLURM, MPI)."""
  if any(env.get(name) for name in _COORDINATOR_VARIABLES):
    return True
  if any(int(env.get(name) or 1) > 1 for name in _PROCESS_COUNT_VARIABLES):
    return True
  return len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def initialize(mode: str = "auto") -> bool:
  """Starts the distributed runtime; returns whether it did.

  Args:
    mode: "on" always initializes (cluster auto-detection: Cloud TPU VM metadata, SLURM, Open MPI,
      Kubernetes, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID); "off" never;
      "auto" initializes when `launched_on_several_hosts()`.
  """
  if mode not in MULTIHOST_MODES:
    raise ValueError(f"multihost mode {mode!r} is not one of {MULTIHOST_MODES}")
  if mode == "off" or (mode == "auto" and not launched_on_several_hosts()):
    return False
  coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if coordinator and os.environ.get("JAX_NUM_PROCESSES"):  # An explicit launch (tests, bare VMs).
    jax.distributed.initialize(coordinator, int(os.environ["JAX_NUM_PROCESSES"]),
                               int(os.environ["JAX_PROCESS_ID"]))
  else:
    jax.distributed.initialize()
  return True
