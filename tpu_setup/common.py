"""What the Cloud TPU scripts share: their flags, the TPU's node names, gcloud commands, `run`.

Each script builds its commands as argument lists and hands them to `run`, which prints each one as
a single shell-quoted line starting with `$ ` and then runs it; with --dry-run it only prints. So
the dry-run output is exactly what a real run executes, and can be pasted into a shell. Lines
starting with `# ` are notes; warnings and errors go to stderr. Standard library only, so the
scripts run from a bare checkout without installing gen_jax.
"""
import argparse
import dataclasses
import pathlib
import re
import shlex
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# Accelerator-type prefix (the TPU generation) -> the TPU software version to run JAX on, as listed
# on Cloud TPU's "TPU software versions" page. v5e slices are named v5litepod-N.
RUNTIME_VERSIONS = {
    "v6e": "v2-alpha-tpuv6e",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v4": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v2": "tpu-ubuntu2204-base",
}

# Where things live on every worker. `$HOME` is left for the worker's shell to expand: gcloud runs
# `--command` in the login shell of the ssh user, who may be named differently there.
REMOTE_REPO = "$HOME/gen_jax"
REMOTE_VENV = "$HOME/gen_jax_venv"
REMOTE_LOGS = "$HOME/gen_jax_logs"
REMOTE_TARBALL = "gen_jax.tar.gz"  # Relative to the home directory, as scp destinations are.
LATEST_RUN = "latest"  # launch.py points $REMOTE_LOGS/latest.{log,pid} at the newest run.

_NAME_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_ACCELERATOR_RE = re.compile(r"([a-z0-9]+)-([0-9]+)")
_RUN_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")


class Parser(argparse.ArgumentParser):
  """An ArgumentParser whose errors are one line: `prog: error: argument --flag: what is wrong`."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

  def fail(self, flag: str, message: str):
    """Stops with a one-line error that names the flag, like argparse's own errors."""
    self.error(f"argument {flag}: {message}")


def parser(doc: str) -> Parser:
  """A parser whose --help shows the script's docstring (its purpose and an example)."""
  return Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def positive_int(text: str) -> int:
  value = int(text) if re.fullmatch(r"-?[0-9]+", text) else None
  if value is None or value < 1:
    raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
  return value


def tpu_name(text: str) -> str:
  """TPU and queued-resource ids: lower-case letters, digits and hyphens, starting with a letter."""
  if not _NAME_RE.fullmatch(text) or len(text) > 50:
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a TPU name: use lower-case letters, digits and '-', start with a letter, "
        "end with a letter or digit, at most 50 characters")
  return text


def run_name(text: str) -> str:
  if not _RUN_NAME_RE.fullmatch(text):
    raise argparse.ArgumentTypeError(f"{text!r}: use letters, digits, '.', '_' and '-' only")
  return text


def accelerator_type(text: str) -> str:
  if not _ACCELERATOR_RE.fullmatch(text):
    raise argparse.ArgumentTypeError(
        f"{text!r} is not an accelerator type such as v5litepod-16, v4-32, v5p-64 or v6e-8")
  return text


def default_runtime_version(accelerator: str) -> str | None:
  """The JAX runtime version for an accelerator type's generation, or None if unknown."""
  return RUNTIME_VERSIONS.get(accelerator.rsplit("-", 1)[0])


def add_tpu_args(p: argparse.ArgumentParser, *, name_required: bool = True) -> None:
  """The flags that say which TPU a script works on; pass the same ones to every script."""
  group = p.add_argument_group("which TPU (give every script the same values)")
  group.add_argument("--name", type=tpu_name, required=name_required,
                     help="TPU VM name, or queued-resource id (with --num-slices=N > 1 its slices are "
                          "NAME-0 .. NAME-<N-1>)")
  group.add_argument("--zone", required=True, help="zone of the TPU, e.g. us-west4-a")
  group.add_argument("--project", help="Google Cloud project (default: gcloud's configured one)")
  group.add_argument("--num-slices", type=positive_int, default=1,
                     help="number of slices; more than 1 means a multislice queued resource "
                          "(default: 1)")
  group.add_argument("--queued", action="store_true",
                     help="the TPU is (or is to be) a queued resource; implied by --num-slices > 1")
  p.add_argument("--dry-run", action="store_true",
                 help="print the commands (one per line, after '$ ') without running any of them")


@dataclasses.dataclass(frozen=True)
class Tpu:
  """A TPU VM, or a queued resource of `num_slices` slices, and the gcloud commands that reach it."""
  name: str
  zone: str
  project: str | None = None
  num_slices: int = 1
  queued: bool = False

  @classmethod
  def from_args(cls, args: argparse.Namespace) -> "Tpu":
    return cls(args.name, args.zone, args.project, args.num_slices,
               args.queued or args.num_slices > 1)

  @property
  def nodes(self) -> list[str]:
    """The TPU VM node of each slice. A multislice queued resource made by create.py names its
    nodes <prefix>-0 .. <prefix>-(N-1) with the queued-resource id as the prefix; a single slice's
    node carries the name itself (create.py passes --node-id=NAME)."""
    if self.num_slices == 1:
      return [self.name]
    return [f"{self.name}-{i}" for i in range(self.num_slices)]

  def gcloud(self, *args: str) -> list[str]:
    """`gcloud compute tpus ARGS --zone=... [--project=...]`."""
    cmd = ["gcloud", "compute", "tpus", *args, f"--zone={self.zone}"]
    if self.project:
      cmd.append(f"--project={self.project}")
    return cmd

  def ssh(self, node: str, command: str, worker: str = "all") -> list[str]:
    """Runs a shell command on one slice's workers (all of them at once by default)."""
    return self.gcloud("tpu-vm", "ssh", node, f"--worker={worker}", f"--command={command}")

  def scp(self, local_path: str, node: str, remote_path: str) -> list[str]:
    """Copies a local file to the same path on every worker of one slice."""
    return self.gcloud("tpu-vm", "scp", local_path, f"{node}:{remote_path}", "--worker=all")

  def flags(self) -> str:
    """The flags that name this TPU to the other scripts, for a 'next step' hint."""
    text = f"--name={self.name} --zone={self.zone}"
    if self.project:
      text += f" --project={self.project}"
    if self.num_slices > 1:
      text += f" --num-slices={self.num_slices}"
    elif self.queued:
      text += " --queued"
    return text


def slice_nodes(p: Parser, tpu: Tpu, choice: str) -> list[str]:
  """The nodes of `--slice` (an index or 'all')."""
  if choice == "all":
    return tpu.nodes
  if not re.fullmatch(r"[0-9]+", choice) or int(choice) >= tpu.num_slices:
    p.fail("--slice", f"{choice!r} is not a slice of this {tpu.num_slices}-slice TPU "
           f"(0..{tpu.num_slices - 1} or all)")
  return [tpu.nodes[int(choice)]]


def worker_choice(text: str) -> str:
  if text != "all" and not re.fullmatch(r"[0-9]+", text):
    raise argparse.ArgumentTypeError(f"{text!r}: give a worker index (0, 1, ...) or all")
  return text


def note(text: str) -> None:
  print(f"# {text}", flush=True)


def warn(text: str) -> None:
  print(f"warning: {text}", file=sys.stderr, flush=True)


def show(cmd: list[str]) -> None:
  print("$ " + shlex.join(cmd), flush=True)


def run(cmd: list[str], dry_run: bool) -> None:
  """Prints `cmd` as one shell-quoted line and, unless dry_run, runs it; stops if it fails."""
  show(cmd)
  if dry_run:
    return
  try:
    subprocess.run(cmd, check=True)
  except FileNotFoundError:
    sys.exit(f"error: {cmd[0]} is not on PATH" +
             (" (install the Google Cloud CLI and run `gcloud auth login`)" if cmd[0] == "gcloud"
              else ""))
  except subprocess.CalledProcessError as e:
    sys.exit(f"error: exit status {e.returncode} from: {shlex.join(cmd)}")
  except KeyboardInterrupt:
    sys.exit(130)


def capture(cmd: list[str]) -> str:
  """Runs a read-only command (never in a dry run) and returns its stripped stdout."""
  try:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
  except FileNotFoundError:
    sys.exit(f"error: {cmd[0]} is not on PATH")
  except subprocess.CalledProcessError as e:
    sys.exit(f"error: exit status {e.returncode} from: {shlex.join(cmd)}\n{e.stderr.strip()}")


def shell(*statements: str) -> str:
  """One bash command line for a worker: stops at the first failing statement."""
  return "; ".join(("set -euo pipefail",) + statements)
