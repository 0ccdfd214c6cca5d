"""Describe a TPU (its state, and for a queued resource where it is in the queue), or list all.

  python tpu_setup/status.py --name=gen-jax --zone=us-west4-a
  python tpu_setup/status.py --name=gen-jax-ms --zone=us-west4-a --num-slices=2
  python tpu_setup/status.py --zone=us-west4-a --list     # every TPU VM and queued resource
"""
import common


def parse_args():
  p = common.parser(__doc__)
  common.add_tpu_args(p, name_required=False)
  p.add_argument("--list", action="store_true",
                 help="list the zone's TPU VMs and queued resources instead")
  args = p.parse_args()
  if args.name is None and not args.list:
    p.fail("--name", "required (or pass --list)")
  return args, common.Tpu(args.name or "", args.zone, args.project, args.num_slices,
                          args.queued or args.num_slices > 1)


def main():
  args, tpu = parse_args()
  if args.list:
    commands = [tpu.gcloud("tpu-vm", "list"), tpu.gcloud("queued-resources", "list")]
  elif tpu.queued:
    commands = [tpu.gcloud("queued-resources", "describe", tpu.name)]
    # The slices exist only once the request is ACTIVE; until then these report NOT_FOUND.
    commands += [tpu.gcloud("tpu-vm", "describe", node, "--format=value(state,health)")
                 for node in tpu.nodes]
  else:
    commands = [tpu.gcloud("tpu-vm", "describe", tpu.name)]
  for cmd in commands:
    common.run(cmd, args.dry_run)


if __name__ == "__main__":
  main()
