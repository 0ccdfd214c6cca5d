"""Start a gen_jax training run on every worker of every slice, in the background.

Every host of a TPU runs the same `python -m gen_jax.main --config=... --workdir=...` (JAX is
multi-controller: one process per host, which find each other through the TPU's metadata). Each
worker writes its own log, ~/gen_jax_logs/RUN.log (RUN defaults to the workdir's last part), and
the process id beside it; logs.py reads the log, stop.py ends the run. Flags after `--` go to
gen_jax.main unchanged, e.g. config overrides:

  python tpu_setup/launch.py --name=gen-jax --zone=us-west4-a \\
      --config=configs/llm/pretrain.py:1b --workdir=/mnt/gcs/my-bucket/runs/1b-v5e16 \\
      -- --config.mesh.data=1 --config.mesh.fsdp=-1 --config.train.num_steps=20000

The workdir must be one directory that every host sees (checkpoints are written by all hosts
together): a Cloud Storage bucket mounted on every worker (install.py --mount-bucket). A local path
works only on a single-host TPU VM. Running the same command again resumes from the newest
checkpoint.
"""
import os
import re
import shlex
import sys

import common


def split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
  """The script's own flags, and what follows the first `--` (for gen_jax.main)."""
  if "--" in argv:
    i = argv.index("--")
    return argv[:i], argv[i + 1:]
  return argv, []


def parse_args(argv: list[str]):
  own, passthrough = split_passthrough(argv)
  p = common.parser(__doc__)
  p.usage = "%(prog)s [options] --config=FILE[:PRESET] --workdir=DIR [-- GEN_JAX_FLAGS ...]"
  common.add_tpu_args(p)
  p.add_argument("--config", required=True,
                 help="experiment config relative to the repository root, with an optional "
                      "preset: configs/llm/pretrain.py:1b")
  p.add_argument("--workdir", required=True,
                 help="run directory shared by all hosts, e.g. /mnt/gcs/BUCKET/runs/NAME")
  p.add_argument("--run-name", type=common.run_name,
                 help="names the per-worker log ~/gen_jax_logs/RUN.log (default: the workdir's "
                      "last part)")
  p.add_argument("--multihost", choices=("on", "auto", "off"), default="on",
                 help="gen_jax.main's --multihost (default: on). On, because a TPU VM lists its "
                      "hosts and slices in its metadata server, where JAX's own cluster detection "
                      "finds them, not in environment variables; a single host starts a "
                      "one-process runtime")
  p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                 help="environment variable for the run on every worker (repeatable), e.g. "
                      "--env=LIBTPU_INIT_ARGS=...")
  args, unknown = p.parse_known_args(own)
  if unknown:
    p.error(f"unrecognized arguments: {' '.join(unknown)} (flags for gen_jax.main, such as "
            "--config.train.num_steps=100, go after `--`)")
  args.passthrough = passthrough

  config_file = args.config.split(":", 1)[0]
  if os.path.isabs(config_file):
    p.fail("--config", f"{config_file} is absolute; give it relative to the repository root "
           "(the workers run from ~/gen_jax)")
  if not (common.REPO_ROOT / config_file).is_file():
    p.fail("--config", f"{config_file} is not a file of this checkout ({common.REPO_ROOT})")
  for item in args.env:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", item):
      p.fail("--env", f"{item!r} is not KEY=VALUE")
  if args.run_name is None:
    base = os.path.basename(args.workdir.rstrip("/")) or "run"
    args.run_name = re.sub(r"[^A-Za-z0-9._-]", "_", base)
  if args.run_name == common.LATEST_RUN:
    p.fail("--run-name", f"{common.LATEST_RUN!r} is reserved for the link to the newest run")
  if not os.path.isabs(args.workdir) and "://" not in args.workdir:
    common.warn(f"--workdir {args.workdir} is relative: it resolves inside ~/gen_jax on each "
                "worker, which a reinstall deletes and other hosts do not see")
  return args, common.Tpu.from_args(args)


def train_command(args) -> str:
  """The gen_jax.main command line, quoted for the worker's shell."""
  env = ["PYTHONUNBUFFERED=1", *args.env]  # Unbuffered, so the log shows progress as it happens.
  argv = ["env", *env, f"{common.REMOTE_VENV}/bin/python", "-m", "gen_jax.main",
          f"--config={args.config}", f"--workdir={args.workdir}", f"--multihost={args.multihost}",
          *args.passthrough]
  # The venv path keeps $HOME unquoted for the worker's shell to expand; the rest is quoted.
  return " ".join(a if a.startswith("$HOME/") else shlex.quote(a) for a in argv)


def worker_script(args) -> str:
  """Refuses to start over a live run (it would hold the TPU), then starts one under nohup with
  every stream redirected, so the ssh session returns at once and the run outlives it."""
  logs = common.REMOTE_LOGS
  log, pid = f"{logs}/{args.run_name}.log", f"{logs}/{args.run_name}.pid"
  latest_pid = f"{logs}/{common.LATEST_RUN}.pid"
  return common.shell(
      f"mkdir -p {logs}",
      f"if [ -f {latest_pid} ] && kill -0 \"$(cat {latest_pid})\" 2>/dev/null; then "
      f"echo \"$(hostname): a run is still going (pid $(cat {latest_pid})); stop it with "
      "tpu_setup/stop.py\" >&2; exit 1; fi",
      f"cd {common.REMOTE_REPO}",
      f"nohup {train_command(args)} > {log} 2>&1 < /dev/null & echo $! > {pid}",
      f"ln -sfn {args.run_name}.log {logs}/{common.LATEST_RUN}.log",
      f"ln -sfn {args.run_name}.pid {latest_pid}",
      f"echo \"$(hostname): started pid $(cat {pid}), log {log}\"")


def main(argv=None):
  args, tpu = parse_args(sys.argv[1:] if argv is None else argv)
  script = worker_script(args)
  for node in tpu.nodes:  # Each ssh returns as soon as its slice's workers have started the run.
    common.run(tpu.ssh(node, script), args.dry_run)
  common.note(f"follow worker 0: python tpu_setup/logs.py {tpu.flags()}")
  common.note(f"stop the run (it saves a checkpoint): python tpu_setup/stop.py {tpu.flags()}")


if __name__ == "__main__":
  main()
