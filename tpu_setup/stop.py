"""Stop a run started by launch.py on every worker of every slice, keeping the TPU.

Sends SIGTERM to the run's process on each worker (from the pid file launch.py wrote): gen_jax
saves a checkpoint and exits, so launching the same command again resumes where it stopped.

  python tpu_setup/stop.py --name=gen-jax --zone=us-west4-a
  python tpu_setup/stop.py --name=gen-jax-ms --zone=us-west4-a --num-slices=2 --signal=KILL
"""
import common


def parse_args():
  p = common.parser(__doc__)
  common.add_tpu_args(p)
  p.add_argument("--run-name", type=common.run_name, default=common.LATEST_RUN,
                 help="the run's --run-name at launch (default: the newest run)")
  p.add_argument("--signal", choices=("TERM", "INT", "KILL"), default="TERM",
                 help="TERM saves a checkpoint first; KILL does not (default: TERM)")
  args = p.parse_args()
  return args, common.Tpu.from_args(args)


def remote_command(args) -> str:
  pid_file = f"{common.REMOTE_LOGS}/{args.run_name}.pid"
  return common.shell(
      f"if [ -f {pid_file} ] && kill -0 \"$(cat {pid_file})\" 2>/dev/null; then "
      f"kill -{args.signal} \"$(cat {pid_file})\"; "
      f"echo \"$(hostname): sent SIG{args.signal} to $(cat {pid_file})\"; "
      "else echo \"$(hostname): no run going\"; fi")


def main():
  args, tpu = parse_args()
  command = remote_command(args)
  for node in tpu.nodes:
    common.run(tpu.ssh(node, command), args.dry_run)


if __name__ == "__main__":
  main()
