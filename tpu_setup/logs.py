"""Show or stream the log of a run started by launch.py, from one worker or from all of them.

Worker 0 of slice 0 (process 0, the one that writes metrics and checkpoints' metadata) is the
default; Ctrl-C stops streaming and leaves the run going.

  python tpu_setup/logs.py --name=gen-jax --zone=us-west4-a              # stream worker 0
  python tpu_setup/logs.py --name=gen-jax --zone=us-west4-a --worker=all --no-follow --lines=20
  python tpu_setup/logs.py --name=gen-jax-ms --zone=us-west4-a --num-slices=2 --slice=1

With several workers, each line starts with its worker's host name.
"""
import argparse

import common


def parse_args():
  p = common.parser(__doc__)
  common.add_tpu_args(p)
  p.add_argument("--worker", type=common.worker_choice, default="0",
                 help="worker index within the slice, or all (default: 0)")
  p.add_argument("--slice", default="0", help="slice index, or all (default: 0)")
  p.add_argument("--run-name", type=common.run_name, default=common.LATEST_RUN,
                 help="the run's --run-name at launch (default: the newest run)")
  p.add_argument("--lines", type=common.positive_int, default=100,
                 help="lines of history to show first (default: 100)")
  p.add_argument("--follow", action=argparse.BooleanOptionalAction, default=True,
                 help="keep streaming new lines (default: follow)")
  args = p.parse_args()
  tpu = common.Tpu.from_args(args)
  args.nodes = common.slice_nodes(p, tpu, args.slice)
  if args.follow and len(args.nodes) > 1:
    # The slices are reached one after another, so following the first would hide the others.
    p.fail("--slice", "all streams only the first slice; add --no-follow, or pick one slice")
  return args, tpu


def remote_command(args) -> str:
  log = f"{common.REMOTE_LOGS}/{args.run_name}.log"
  tail = f"tail -n {args.lines}{' -F' if args.follow else ''} {log}"
  if args.worker == "all" or len(args.nodes) > 1:
    tail += " | sed -u \"s/^/$(hostname): /\""  # Tells interleaved workers apart.
  return common.shell(f"test -e {log} || {{ echo \"$(hostname): no log {log}\" >&2; exit 1; }}",
                      tail)


def main():
  args, tpu = parse_args()
  command = remote_command(args)
  for node in args.nodes:
    common.run(tpu.ssh(node, command, worker=args.worker), args.dry_run)


if __name__ == "__main__":
  main()
