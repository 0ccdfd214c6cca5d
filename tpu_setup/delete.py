"""Delete what create.py made: the TPU VM, or the queued resource together with all its slices.

A TPU bills by the hour while it exists, whether or not anything runs on it; delete it when done.
Checkpoints and logs under a bucket-backed --workdir survive; the workers' disks do not.

  python tpu_setup/delete.py --name=gen-jax --zone=us-west4-a
  python tpu_setup/delete.py --name=gen-jax-ms --zone=us-west4-a --num-slices=2 --quiet

A queued resource is deleted with --force, which deletes its TPU VMs first; this also cancels a
request still waiting in the queue.
"""
import common


def parse_args():
  p = common.parser(__doc__)
  common.add_tpu_args(p)
  p.add_argument("--quiet", action="store_true",
                 help="do not ask for confirmation (gcloud's --quiet)")
  p.add_argument("--async", dest="is_async", action="store_true",
                 help="return without waiting for the deletion to finish")
  args = p.parse_args()
  return args, common.Tpu.from_args(args)


def delete_command(args, tpu: common.Tpu) -> list[str]:
  if tpu.queued:
    cmd = tpu.gcloud("queued-resources", "delete", tpu.name, "--force")
  else:
    cmd = tpu.gcloud("tpu-vm", "delete", tpu.name)
  if args.quiet:
    cmd.append("--quiet")
  if args.is_async:
    cmd.append("--async")
  return cmd


def main():
  args, tpu = parse_args()
  common.run(delete_command(args, tpu), args.dry_run)


if __name__ == "__main__":
  main()
