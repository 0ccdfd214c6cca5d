"""Create a Cloud TPU: one TPU VM slice, or a queued resource of one or more slices.

One slice, created at once (fails if the zone has no capacity now):
  python tpu_setup/create.py --name=gen-jax --zone=us-west4-a --accelerator-type=v5litepod-16

One slice through the queue (waits for capacity; pass --queued to the other scripts too):
  python tpu_setup/create.py --name=gen-jax --zone=us-west4-a --accelerator-type=v5litepod-16 \\
      --queued

Two slices joined over the data-center network (multislice; always a queued resource, its nodes
are gen-jax-ms-0 and gen-jax-ms-1):
  python tpu_setup/create.py --name=gen-jax-ms --zone=us-west4-a \\
      --accelerator-type=v5litepod-16 --num-slices=2

A queued resource is polled until it is ACTIVE (--no-wait to return at once). The runtime version
defaults to the one Cloud TPU lists for JAX on the accelerator's generation.
"""
import argparse
import time

import common

_FAILED_STATES = ("FAILED", "SUSPENDING", "SUSPENDED")


def parse_args():
  p = common.parser(__doc__)
  common.add_tpu_args(p)
  p.add_argument("--accelerator-type", type=common.accelerator_type, required=True,
                 help="slice type: v5litepod-16 (v5e), v4-32, v5p-64, v6e-16, ...")
  p.add_argument("--runtime-version",
                 help="TPU software version (default by generation: " +
                      ", ".join(f"{g}: {v}" for g, v in common.RUNTIME_VERSIONS.items()) + ")")
  price = p.add_mutually_exclusive_group()
  price.add_argument("--spot", action="store_true",
                     help="Spot VMs: cheaper, and may be preempted at any time")
  price.add_argument("--preemptible", action="store_true",
                     help="preemptible TPU VM (tpu-vm create only; queued resources take --spot)")
  p.add_argument("--service-account",
                 help="service account of the VMs (it needs write access to the run's bucket)")
  p.add_argument("--scopes", help="access scopes of the VMs, e.g. cloud-platform")
  p.add_argument("--gcloud-flag", action="append", default=[], metavar="FLAG",
                 help="extra flag for the create command, e.g. --gcloud-flag=--reserved "
                      "(repeatable)")
  p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                 help="poll a queued resource until it is ACTIVE (default: wait)")
  p.add_argument("--timeout-minutes", type=common.positive_int, default=180,
                 help="stop polling after this long; the request stays queued (default: 180)")
  p.add_argument("--poll-seconds", type=common.positive_int, default=30,
                 help="seconds between state checks (default: 30)")
  args = p.parse_args()

  if args.runtime_version is None:
    args.runtime_version = common.default_runtime_version(args.accelerator_type)
    if args.runtime_version is None:
      generation = args.accelerator_type.rsplit("-", 1)[0]
      p.fail("--accelerator-type", f"unknown TPU generation {generation!r} in "
             f"{args.accelerator_type!r} (known: {', '.join(common.RUNTIME_VERSIONS)}); "
             "pass --runtime-version to use it anyway")
  tpu = common.Tpu.from_args(args)
  if args.preemptible and tpu.queued:
    p.fail("--preemptible", "queued resources are not created preemptible; use --spot")
  return args, tpu


def create_command(args, tpu: common.Tpu) -> list[str]:
  """`tpu-vm create` for a TPU VM, `queued-resources create` for a queued resource."""
  if tpu.queued:
    cmd = tpu.gcloud("queued-resources", "create", tpu.name,
                     f"--accelerator-type={args.accelerator_type}",
                     f"--runtime-version={args.runtime_version}")
    if tpu.num_slices > 1:
      # Slices of one queued resource are provisioned together and told about each other
      # (MEGASCALE_* in their metadata), which is what makes them one multislice job.
      cmd += [f"--node-count={tpu.num_slices}", f"--node-prefix={tpu.name}"]
    else:
      cmd.append(f"--node-id={tpu.name}")
  else:
    cmd = tpu.gcloud("tpu-vm", "create", tpu.name, f"--accelerator-type={args.accelerator_type}",
                     f"--version={args.runtime_version}")
  if args.spot:
    cmd.append("--spot")
  if args.preemptible:
    cmd.append("--preemptible")
  if args.service_account:
    cmd.append(f"--service-account={args.service_account}")
  if args.scopes:
    cmd.append(f"--scopes={args.scopes}")
  return cmd + args.gcloud_flag


def wait_until_active(args, tpu: common.Tpu) -> None:
  """Polls the queued resource's state; a request may wait in the queue for minutes or hours."""
  describe = tpu.gcloud("queued-resources", "describe", tpu.name, "--format=value(state.state)")
  common.note(f"polling every {args.poll_seconds} s until the state is ACTIVE "
              f"(at most {args.timeout_minutes} min):")
  common.show(describe)
  if args.dry_run:
    return
  deadline = time.monotonic() + 60 * args.timeout_minutes
  last = None
  while True:
    state = common.capture(describe)
    if state != last:
      common.note(f"state: {state}")
      last = state
    if state == "ACTIVE":
      return
    if state in _FAILED_STATES:
      raise SystemExit(f"error: queued resource {tpu.name} is {state}; see "
                       f"`python tpu_setup/status.py {tpu.flags()}`, then delete it with "
                       f"`python tpu_setup/delete.py {tpu.flags()}`")
    if time.monotonic() > deadline:
      raise SystemExit(f"error: {tpu.name} is still {state} after {args.timeout_minutes} min; it "
                       "stays in the queue (check with status.py, or cancel with delete.py)")
    time.sleep(args.poll_seconds)


def main():
  args, tpu = parse_args()
  common.run(create_command(args, tpu), args.dry_run)
  if tpu.queued and args.wait:
    wait_until_active(args, tpu)
  common.note("it costs money until deleted: "
              f"python tpu_setup/delete.py {tpu.flags()}")
  common.note(f"next: python tpu_setup/install.py {tpu.flags()}")


if __name__ == "__main__":
  main()
