"""Install gen_jax on every worker of every slice: the code, a virtual environment, `.[tpu]`.

By default ships this checkout: `git archive` of --ref (HEAD; uncommitted changes are not
included) is copied to every worker and unpacked into ~/gen_jax. With --repo-url every worker
clones that repository at --ref instead. Then, on every worker, a Python (--python, installed with
apt if missing) makes ~/gen_jax_venv, into which `pip install -e ".[tpu]"` installs gen_jax with
JAX's TPU runtime. Safe to rerun after a code change (stop a running job first: stop.py).

  python tpu_setup/install.py --name=gen-jax --zone=us-west4-a --mount-bucket=my-bucket
  python tpu_setup/install.py --name=gen-jax-ms --zone=us-west4-a --num-slices=2 \\
      --repo-url=https://github.com/ORG/gen_jax.git --ref=main

--mount-bucket mounts a Cloud Storage bucket at /mnt/gcs/BUCKET on every worker with Cloud
Storage FUSE, so that all hosts share one --workdir (see README.md).
"""
import os
import re
import shlex
import tempfile

import common

MOUNT_ROOT = "/mnt/gcs"
# apt on a freshly booted VM can find dpkg locked by unattended upgrades for a few minutes.
_APT = "sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600"


def parse_args():
  p = common.parser(__doc__)
  common.add_tpu_args(p)
  p.add_argument("--repo-url", help="clone this repository on every worker instead of shipping "
                                    "this checkout")
  p.add_argument("--ref", default="HEAD",
                 help="commit, branch or tag to install (default: HEAD)")
  p.add_argument("--python", default="python3.11",
                 help="Python on the workers for the venv (gen_jax needs >= 3.11; default: "
                      "python3.11, apt-installed if missing)")
  p.add_argument("--mount-bucket", metavar="BUCKET",
                 help=f"mount gs://BUCKET at {MOUNT_ROOT}/BUCKET on every worker (gcsfuse)")
  args = p.parse_args()
  if not re.fullmatch(r"python3\.[0-9]+|/[^\s]+", args.python):
    p.fail("--python", f"{args.python!r}: give python3.N or an absolute path")
  if not re.fullmatch(r"[A-Za-z0-9._/~^@{}-]+", args.ref):
    p.fail("--ref", f"{args.ref!r} is not a git ref")
  if args.mount_bucket is not None:
    args.mount_bucket = args.mount_bucket.removeprefix("gs://").rstrip("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]", args.mount_bucket):
      p.fail("--mount-bucket", f"{args.mount_bucket!r} is not a bucket name (give my-bucket, "
             "not a path inside it)")
  return args, common.Tpu.from_args(args)


def ensure_python(python: str) -> list[str]:
  """Installs python3.N and its venv module with apt when the image lacks them (the Ubuntu 22.04
  TPU images come with 3.10; gen_jax needs 3.11+)."""
  if not python.startswith("python3."):
    return [f"{python} -c 'import ensurepip'"]
  return [(f"if ! {python} -c 'import ensurepip' >/dev/null 2>&1; then "
           f"{_APT} update -qq; {_APT} install -y -qq {python} {python}-venv; fi")]


def fetch_code(args) -> list[str]:
  """Puts a fresh copy of the code at ~/gen_jax (the venv beside it is kept)."""
  steps = [f"rm -rf {common.REMOTE_REPO}"]
  if args.repo_url:
    return steps + [
        f"git clone --quiet {shlex.quote(args.repo_url)} {common.REMOTE_REPO}",
        f"git -C {common.REMOTE_REPO} checkout --quiet {shlex.quote(args.ref)}"]
  return steps + [f"mkdir -p {common.REMOTE_REPO}",
                  f"tar -xzf $HOME/{common.REMOTE_TARBALL} -C {common.REMOTE_REPO}"]


def install_package(python: str) -> list[str]:
  """A venv that survives reinstalls (so pip only fetches what changed), then gen_jax[tpu]."""
  venv_python = f"{common.REMOTE_VENV}/bin/python"
  pip = f"{venv_python} -m pip install --quiet"
  return [f"if [ ! -x {venv_python} ]; then {python} -m venv {common.REMOTE_VENV}; fi",
          f"{pip} --upgrade pip",
          f"cd {common.REMOTE_REPO}",
          f"{pip} -e '.[tpu]'",
          (f"{venv_python} -c 'import gen_jax, jax, socket; "
           "print(socket.gethostname(), \"has gen_jax with jax\", jax.__version__)'")]


def mount_bucket(bucket: str) -> list[str]:
  """Cloud Storage FUSE from Google's apt repository, then the bucket at /mnt/gcs/BUCKET."""
  mount_point = f"{MOUNT_ROOT}/{bucket}"
  keyring = "/usr/share/keyrings/cloud.google.asc"
  return [
      ("if ! command -v gcsfuse >/dev/null 2>&1; then "
       f"curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee {keyring} "
       f">/dev/null; echo \"deb [signed-by={keyring}] https://packages.cloud.google.com/apt "
       "gcsfuse-$(lsb_release -c -s) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list "
       f">/dev/null; {_APT} update -qq; {_APT} install -y -qq gcsfuse; fi"),
      f"sudo mkdir -p {mount_point}",
      f"sudo chown \"$(id -u):$(id -g)\" {mount_point}",
      f"mountpoint -q {mount_point} || gcsfuse --implicit-dirs {bucket} {mount_point}"]


def worker_script(args) -> str:
  """One bash line for every worker; it stops at the first failing step."""
  steps = ensure_python(args.python) + fetch_code(args) + install_package(args.python)
  if args.mount_bucket:
    steps += mount_bucket(args.mount_bucket)
  return common.shell(*steps)


def ship_checkout(args, tpu: common.Tpu) -> None:
  """`git archive` of --ref, copied to every worker of every slice."""
  tarball = os.path.join(tempfile.gettempdir(), f"gen_jax-{tpu.name}.tar.gz")
  common.note(f"ships {args.ref} of {common.REPO_ROOT} (committed files only)")
  if not args.dry_run and args.ref == "HEAD":
    dirty = common.capture(["git", "-C", str(common.REPO_ROOT), "status", "--porcelain",
                            "--untracked-files=no"])
    if dirty:
      common.warn("the checkout has uncommitted changes; they are not shipped (commit them first)")
  common.run(["git", "-C", str(common.REPO_ROOT), "archive", "--format=tar.gz",
              f"--output={tarball}", args.ref], args.dry_run)
  for node in tpu.nodes:
    common.run(tpu.scp(tarball, node, common.REMOTE_TARBALL), args.dry_run)


def main():
  args, tpu = parse_args()
  if not args.repo_url:
    ship_checkout(args, tpu)
  # One slice after another: each ssh already reaches all of a slice's workers at once.
  script = worker_script(args)
  for node in tpu.nodes:
    common.run(tpu.ssh(node, script), args.dry_run)
  if args.mount_bucket:
    common.note(f"workdirs under {MOUNT_ROOT}/{args.mount_bucket}/ are shared by all hosts")
  common.note(f"next: python tpu_setup/launch.py {tpu.flags()} "
              "--config=configs/llm/pretrain.py:1b --workdir=...")


if __name__ == "__main__":
  main()
