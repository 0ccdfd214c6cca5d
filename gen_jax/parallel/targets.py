"""Devices of a machine this host is not: compile-only clients for ahead-of-time compilation.

JAX compiles for a GPU or TPU it does not have (a compile-only client built from a target
description, `jax.experimental.topologies`) when the CUDA plugin or libtpu is installed beside
jaxlib; nothing runs there. `--dry_run --dry_run_target=...` and benchmarks/aot_hlo.py compile
with the target's own compiler this way: its memory figures and program, not XLA:CPU's.
"""
import jax


class TargetError(ValueError):
  """A target this host cannot compile for: an unknown name, or no compile-only client."""

# XLA's GpuTargetConfigProto in text form: what the compiler asks of the device. Data-sheet and
# CUDA occupancy figures of the two Hopper parts (SM 9.0: 132 multiprocessors, 228 KiB of shared
# memory per multiprocessor of which 227 KiB per block, 64K registers); bandwidth, memory and L2
# as the data sheets give them. The cuDNN and CUDA runtime versions are those of the lent H200's
# image (docs/BENCHMARKS.md).
_HOPPER = """
gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132
  fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: {bandwidth} l2_cache_size: {l2}
  clock_rate_ghz: 1.98 device_memory_size: {memory} shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 minor: 0 }}
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 10 }}
runtime_version {{ major: 13 minor: 0 }}
device_description_str: "{name}"
"""
GPU_BANDWIDTH = {"h200": 4_800_000_000_000, "h100": 3_352_320_000_000}
GPU_TARGETS = {
    "h200": _HOPPER.format(bandwidth=GPU_BANDWIDTH["h200"], l2=62_914_560,
                           memory=150_754_820_096, name="NVIDIA H200"),
    "h100": _HOPPER.format(bandwidth=GPU_BANDWIDTH["h100"], l2=52_428_800,
                           memory=84_929_347_584, name="NVIDIA H100 80GB HBM3"),
}


def compile_only_devices(target: str) -> tuple[str, list]:
  """(platform, the devices) of `target`: "h200" or "h100" (one GPU), or "tpu:TOPOLOGY" (a slice,
  e.g. tpu:v5e:2x2, all its devices). Raises TargetError naming the target, or saying what to
  install when this host has no compile-only client for it."""
  from jax.experimental import topologies
  platform = "tpu" if target.startswith("tpu:") else "gpu"
  if platform == "gpu" and target not in GPU_TARGETS:
    raise TargetError(f"target {target!r} is not one of {sorted(GPU_TARGETS)} or tpu:TOPOLOGY "
                     "(e.g. tpu:v5e:2x2)")
  try:
    if platform == "tpu":
      topology = topologies.get_topology_desc(platform="tpu",
                                              topology_name=target.removeprefix("tpu:"))
    else:
      topology = topologies.get_topology_desc(platform="cuda", target_config=GPU_TARGETS[target],
                                              topology="1x1x1")
  except Exception as error:  # noqa: BLE001 - the one likely cause, said plainly.
    package = "tpu" if platform == "tpu" else "cuda13"
    raise TargetError(f"no compile-only {platform.upper()} client ({type(error).__name__}: "
                     f"{str(error)[:300]}); install it: pip install "
                     f"'jax[{package}]=={jax.__version__}'") from error
  return platform, list(topology.devices)
