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
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO; keep the console readable.
    logging.set_verbosity(logging.WARNING)
  from gen_jax import parallel
  parallel.distributed.initialize(_MULTIHOST.value)  # Before anything touches a device.
  from gen_jax.config import ConfigError
  from gen_jax.train import NonFiniteError, train_and_evaluate
  try:
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
