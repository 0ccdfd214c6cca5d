"""Train any experiment config: the one entry point for every family and stage.

  python -m gen_jax.main --config=configs/llm/pretrain.py:tiny --workdir=/tmp/run \
      --config.train.num_steps=200 --config.model.num_layers=4

Running the same command on the same workdir resumes from its newest checkpoint.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:preset].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs; on "
                               "several hosts, one every host can reach (a GCS bucket or shared mount).")
_MULTIHOST = flags.DEFINE_enum("multihost", "auto", ["auto", "on", "off"],
                               "Start JAX's distributed runtime: auto when the environment shows "
                               "several hosts (Cloud TPU, SLURM, MPI, JAX_COORDINATOR_ADDRESS).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Compile the train step for the config's mesh from "
                             "shapes and print per-device memory, FLOPs and shardings; train nothing.")
_DRY_RUN_DEVICES = flags.DEFINE_integer("dry_run_devices", 0, "With --dry_run: pretend to have this "
                                        "many (CPU) devices, to check a pod-sized mesh on a laptop.")
_DRY_RUN_TARGET = flags.DEFINE_string("dry_run_target", None, "With --dry_run: compile for this "
                                      "machine instead (h200, h100, or tpu:TOPOLOGY such as "
                                      "tpu:v5e:2x2) with its own compiler; needs jax[cuda13] or "
                                      "jax[tpu] installed here, no such device.")
flags.mark_flags_as_required(["config"])
flags.register_validator("workdir", lambda w: w is not None or flags.FLAGS.dry_run,
                         "--workdir is required unless --dry_run")
flags.register_validator("dry_run_devices", lambda n: n == 0 or (n > 0 and flags.FLAGS.dry_run),
                         "--dry_run_devices needs --dry_run and a positive count (training never "
                         "runs on pretend devices)")
flags.register_validator("dry_run_target", lambda t: t is None or (
    flags.FLAGS.dry_run and not flags.FLAGS.dry_run_devices),
                         "--dry_run_target needs --dry_run, and takes the target's devices "
                         "instead of --dry_run_devices")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO; keep the console readable.
    logging.set_verbosity(logging.WARNING)
  import jax
  if _DRY_RUN_DEVICES.value:  # Must happen before any backend starts.
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", _DRY_RUN_DEVICES.value)
  if _DRY_RUN_TARGET.value:  # The host only traces; the target's devices are compile-only.
    jax.config.update("jax_platforms", "cpu")
  from gen_jax import parallel
  parallel.distributed.initialize(_MULTIHOST.value)  # Before anything touches a device.
  from gen_jax.config import ConfigError
  from gen_jax.train import NonFiniteError, train_and_evaluate
  from gen_jax.train.dry_run import dry_run
  try:
    if _DRY_RUN.value:
      try:
        print(dry_run(_CONFIG.value, _DRY_RUN_TARGET.value).format())
      except parallel.targets.TargetError as e:
        print(f"--dry_run_target: {e}", file=sys.stderr)
        sys.exit(2)
      return
    metrics = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    print(f"Config error: {e}", file=sys.stderr)
    sys.exit(2)
  except NonFiniteError as e:
    print(f"Training stopped: {e}", file=sys.stderr)
    sys.exit(3)
  print("Final metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))


if __name__ == "__main__":
  from gen_jax.config.cli import parse_flags_with_config
  app.run(main, flags_parser=parse_flags_with_config)
