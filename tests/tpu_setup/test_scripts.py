"""tpu_setup/: the gcloud commands each script prints and runs, and the scripts it runs on workers.

No gcloud is reached: every script runs with a PATH whose only `gcloud` and `git` are fakes that
record their arguments, so a dry run must leave no record, and a real run must execute exactly the
commands it printed. The worker-side shell scripts of launch/logs/stop are run here with bash in a
fake home directory, with a stand-in for the venv's python.
"""
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import time

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = REPO_ROOT / "tpu_setup"
ONE = ("--name=gen-jax", "--zone=us-west4-a")
TWO = ("--name=gen-jax-ms", "--zone=us-west4-a", "--num-slices=2")
CONFIG = ("--config=configs/llm/pretrain.py:1b", "--workdir=/mnt/gcs/bucket/runs/1b")

_FAKE = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as f:
  f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
if "describe" in sys.argv:
  print("ACTIVE")
"""


@pytest.fixture
def fake_bin(tmp_path):
  """A PATH holding only recording fakes of gcloud and git; returns (path, log file)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("gcloud", "git"):
    (bin_dir / tool).write_text(_FAKE)
    (bin_dir / tool).chmod(0o755)
  return str(bin_dir), tmp_path / "calls.jsonl"


def run(script, *args, fake=None, path=None):
  env = dict(os.environ)
  if fake is not None:
    env["PATH"], env["FAKE_LOG"] = fake[0], str(fake[1])
  if path is not None:
    env["PATH"] = path
  return subprocess.run([sys.executable, str(SCRIPTS / f"{script}.py"), *args], check=False,
                        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)


def printed(stdout: str) -> list[list[str]]:
  """The commands a script printed, one `$ ` line each, as argument lists."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("$ ")]


def dry(fake, script, *args) -> list[list[str]]:
  """Runs a script with --dry-run (first: after `--` it would be gen_jax's); it must succeed and
  run nothing."""
  result = run(script, "--dry-run", *args, fake=fake)
  assert result.returncode == 0, result.stderr
  assert not fake[1].exists(), f"dry run executed: {fake[1].read_text()}"
  return printed(result.stdout)


def remote(cmd: list[str]) -> str:
  """The shell command an ssh command runs on the workers."""
  [command] = [a.removeprefix("--command=") for a in cmd if a.startswith("--command=")]
  return command


def flag(cmd: list[str], name: str) -> str:
  [value] = [a.split("=", 1)[1] for a in cmd if a.startswith(f"--{name}=")]
  return value


# create


def test_create_one_slice_is_a_tpu_vm_with_the_v5e_runtime(fake_bin):
  [cmd] = dry(fake_bin, "create", *ONE, "--accelerator-type=v5litepod-16")
  assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "gen-jax"]
  assert flag(cmd, "zone") == "us-west4-a"
  assert flag(cmd, "accelerator-type") == "v5litepod-16"
  assert flag(cmd, "version") == "v2-alpha-tpuv5-lite"
  assert "--spot" not in cmd and not any(a.startswith("--project") for a in cmd)


@pytest.mark.parametrize("accelerator, runtime", [
    ("v4-32", "tpu-ubuntu2204-base"), ("v5p-64", "v2-alpha-tpuv5"), ("v6e-16", "v2-alpha-tpuv6e")])
def test_create_runtime_default_follows_the_generation(fake_bin, accelerator, runtime):
  [cmd] = dry(fake_bin, "create", *ONE, f"--accelerator-type={accelerator}")
  assert flag(cmd, "version") == runtime


def test_create_explicit_runtime_and_options(fake_bin):
  [cmd] = dry(fake_bin, "create", *ONE, "--accelerator-type=v4-8", "--runtime-version=custom-rt",
              "--project=my-proj", "--preemptible", "--gcloud-flag=--reserved")
  assert flag(cmd, "version") == "custom-rt" and flag(cmd, "project") == "my-proj"
  assert "--preemptible" in cmd and "--reserved" in cmd


def test_create_multislice_is_one_queued_resource_and_waits_for_active(fake_bin):
  create, describe = dry(fake_bin, "create", *TWO, "--accelerator-type=v5litepod-16", "--spot")
  assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "gen-jax-ms"]
  assert flag(create, "node-count") == "2" and flag(create, "node-prefix") == "gen-jax-ms"
  assert flag(create, "runtime-version") == "v2-alpha-tpuv5-lite"
  assert flag(create, "accelerator-type") == "v5litepod-16" and "--spot" in create
  assert not any(a.startswith("--node-id") for a in create)
  assert describe[3:6] == ["queued-resources", "describe", "gen-jax-ms"]
  assert flag(describe, "format") == "value(state.state)"


def test_create_queued_single_slice_names_its_node(fake_bin):
  commands = dry(fake_bin, "create", *ONE, "--accelerator-type=v4-8", "--queued", "--no-wait")
  [cmd] = commands
  assert cmd[3:5] == ["queued-resources", "create"] and flag(cmd, "node-id") == "gen-jax"
  assert not any(a.startswith("--node-count") for a in cmd)


def test_create_runs_exactly_what_it_prints(fake_bin):
  result = run("create", *TWO, "--accelerator-type=v5p-16", fake=fake_bin)
  assert result.returncode == 0, result.stderr
  calls = [json.loads(line) for line in fake_bin[1].read_text().splitlines()]
  assert calls == printed(result.stdout)  # The fake answers ACTIVE to the first poll.
  assert "# state: ACTIVE" in result.stdout


# delete


@pytest.mark.parametrize("layout, kind", [
    ((), "tpu-vm"), (("--queued",), "queued-resources"), (("--num-slices=2",), "queued-resources")])
def test_delete_deletes_what_create_made(fake_bin, layout, kind):
  create = dry(fake_bin, "create", *ONE, *layout, "--accelerator-type=v4-8")[0]
  [delete] = dry(fake_bin, "delete", *ONE, *layout, "--quiet")
  assert create[3] == delete[3] == kind and create[5] == delete[5] == "gen-jax"
  assert delete[4] == "delete" and "--quiet" in delete and flag(delete, "zone") == "us-west4-a"
  # --force deletes a queued resource's TPU VMs with it (otherwise the request is refused).
  assert ("--force" in delete) == (kind == "queued-resources")


def test_delete_asks_for_confirmation_unless_quiet(fake_bin):
  [cmd] = dry(fake_bin, "delete", *ONE)
  assert "--quiet" not in cmd


# install


def test_install_ships_the_checkout_and_pip_installs_tpu_extra(fake_bin):
  archive, scp, ssh = dry(fake_bin, "install", *ONE)
  assert archive[:4] == ["git", "-C", str(REPO_ROOT), "archive"] and archive[-1] == "HEAD"
  tarball = flag(archive, "output")
  assert scp[3:5] == ["tpu-vm", "scp"] and "--worker=all" in scp
  assert scp[5:7] == [tarball, "gen-jax:gen_jax.tar.gz"]
  assert ssh[3:6] == ["tpu-vm", "ssh", "gen-jax"] and "--worker=all" in ssh
  script = remote(ssh)
  assert "tar -xzf $HOME/gen_jax.tar.gz -C $HOME/gen_jax" in script
  assert "python3.11 -m venv $HOME/gen_jax_venv" in script
  assert "pip install --quiet -e '.[tpu]'" in script
  assert script.index("tar -xzf") < script.index("-e '.[tpu]'")


def test_install_multislice_reaches_every_slice(fake_bin):
  commands = dry(fake_bin, "install", *TWO, "--mount-bucket=gs://my-bucket/")
  scps = [c for c in commands if c[3:5] == ["tpu-vm", "scp"]]
  sshs = [c for c in commands if c[3:5] == ["tpu-vm", "ssh"]]
  assert [c[6].split(":")[0] for c in scps] == ["gen-jax-ms-0", "gen-jax-ms-1"]
  assert [c[5] for c in sshs] == ["gen-jax-ms-0", "gen-jax-ms-1"]
  assert all("--worker=all" in c for c in scps + sshs)
  assert "gcsfuse --implicit-dirs my-bucket /mnt/gcs/my-bucket" in remote(sshs[0])


def test_install_from_repo_url_clones_the_ref(fake_bin):
  [ssh] = dry(fake_bin, "install", *ONE, "--repo-url=https://example.com/gen_jax.git",
              "--ref=v1.2")
  script = remote(ssh)
  assert "git clone --quiet https://example.com/gen_jax.git $HOME/gen_jax" in script
  assert "checkout --quiet v1.2" in script and "-e '.[tpu]'" in script


def test_install_runs_exactly_what_it_prints(fake_bin):
  result = run("install", *TWO, fake=fake_bin)
  assert result.returncode == 0, result.stderr
  calls = [json.loads(line) for line in fake_bin[1].read_text().splitlines()]
  assert calls[0][:4] == ["git", "-C", str(REPO_ROOT), "status"]  # The uncommitted-changes check.
  assert calls[1:] == printed(result.stdout)


# launch


def test_launch_runs_main_on_every_worker_of_every_slice_with_overrides(fake_bin):
  override = "--config.data.source=/data/my texts/*.txt"
  commands = dry(fake_bin, "launch", *TWO, *CONFIG, "--env=LIBTPU_INIT_ARGS=--xla_flag=1", "--",
                 "--config.mesh.data=1", "--config.mesh.fsdp=-1", override)
  assert [c[3:6] for c in commands] == [["tpu-vm", "ssh", "gen-jax-ms-0"],
                                        ["tpu-vm", "ssh", "gen-jax-ms-1"]]
  assert all("--worker=all" in c for c in commands)
  script = remote(commands[0])
  assert remote(commands[1]) == script
  assert ("nohup env PYTHONUNBUFFERED=1 LIBTPU_INIT_ARGS=--xla_flag=1 "
          "$HOME/gen_jax_venv/bin/python -m gen_jax.main --config=configs/llm/pretrain.py:1b "
          "--workdir=/mnt/gcs/bucket/runs/1b --multihost=on --config.mesh.data=1 --config.mesh.fsdp=-1 "
          f"{shlex.quote(override)} > $HOME/gen_jax_logs/1b.log 2>&1 < /dev/null &") in script


def test_launch_flags_are_flags_of_gen_jax_main(fake_bin):
  """launch.py adds --multihost to the command; gen_jax.main must define it with those values."""
  [cmd] = dry(fake_bin, "launch", *ONE, *CONFIG, "--multihost=auto")
  assert "--multihost=auto" in remote(cmd)
  probe = ("import gen_jax.main; from absl import flags; "
           "print(*flags.FLAGS['multihost'].parser.enum_values)")
  result = subprocess.run([sys.executable, "-c", probe], check=False, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
  assert set(result.stdout.split()) >= {"on", "auto", "off"}, result.stderr


def test_every_worker_script_is_valid_bash(fake_bin):
  commands = (dry(fake_bin, "install", *ONE, "--mount-bucket=b-1") +
              dry(fake_bin, "launch", *ONE, *CONFIG, "--", "--config.seed=1") +
              dry(fake_bin, "logs", *ONE, "--worker=all") +
              dry(fake_bin, "stop", *ONE))
  for cmd in commands:
    if any(a.startswith("--command=") for a in cmd):
      check = subprocess.run(["bash", "-n", "-c", remote(cmd)], check=False, capture_output=True,
                             text=True)
      assert check.returncode == 0, (cmd[:6], check.stderr)


def _on_worker(cmd: list[str], home: pathlib.Path) -> subprocess.CompletedProcess:
  """Runs an ssh command's worker script locally in a fake home directory."""
  env = {"HOME": str(home), "PATH": os.environ["PATH"]}
  return subprocess.run(["bash", "-c", remote(cmd)], check=False, env=env, capture_output=True,
                        text=True, timeout=20)


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("nohup") is None,
                    reason="needs bash and nohup")
def test_launch_logs_stop_on_a_fake_worker(fake_bin, tmp_path):
  home = tmp_path / "home"
  (home / "gen_jax").mkdir(parents=True)
  venv_bin = home / "gen_jax_venv" / "bin"
  venv_bin.mkdir(parents=True)
  # Stands in for gen_jax.main: records its arguments, logs a line, runs until SIGTERM.
  (venv_bin / "python").write_text(
      "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$HOME/argv.txt\"\necho \"step 1: loss 2.5\"\n"
      "trap 'echo TERM > \"$HOME/term.txt\"; kill $child; exit 0' TERM\n"
      "sleep 30 & child=$!\nwait $child\n")
  (venv_bin / "python").chmod(0o755)
  override = "--config.data.source=/data/my texts/*.txt"
  [launch] = dry(fake_bin, "launch", *ONE, *CONFIG, "--", "--config.seed=3", override)
  started = _on_worker(launch, home)  # Returns at once: the run is detached from the session.
  assert started.returncode == 0, started.stderr
  pid = int((home / "gen_jax_logs" / "1b.pid").read_text())
  try:
    deadline = time.monotonic() + 10
    while not (home / "argv.txt").exists() and time.monotonic() < deadline:
      time.sleep(0.05)
    assert (home / "argv.txt").read_text().splitlines() == [
        "-m", "gen_jax.main", "--config=configs/llm/pretrain.py:1b",
        "--workdir=/mnt/gcs/bucket/runs/1b", "--multihost=on", "--config.seed=3", override]
    assert os.readlink(home / "gen_jax_logs" / "latest.log") == "1b.log"

    again = _on_worker(launch, home)
    assert again.returncode == 1 and "a run is still going" in again.stderr

    [logs] = dry(fake_bin, "logs", *ONE, "--no-follow")
    assert _on_worker(logs, home).stdout == "step 1: loss 2.5\n"

    [stop] = dry(fake_bin, "stop", *ONE)
    assert "sent SIGTERM" in _on_worker(stop, home).stdout
    while not (home / "term.txt").exists() and time.monotonic() < deadline:
      time.sleep(0.05)
    assert (home / "term.txt").exists()
  finally:
    try:
      os.kill(pid, 9)
    except ProcessLookupError:
      pass


# logs, status


def test_logs_default_streams_worker_zero_and_all_workers_are_labelled(fake_bin):
  [cmd] = dry(fake_bin, "logs", *ONE)
  assert "--worker=0" in cmd and "tail -n 100 -F $HOME/gen_jax_logs/latest.log" in remote(cmd)
  [cmd] = dry(fake_bin, "logs", *TWO, "--slice=1", "--worker=all", "--run-name=1b")
  assert cmd[5] == "gen-jax-ms-1" and "--worker=all" in cmd
  assert 'sed -u "s/^/$(hostname): /"' in remote(cmd) and "1b.log" in remote(cmd)
  commands = dry(fake_bin, "logs", *TWO, "--slice=all", "--no-follow")
  assert [c[5] for c in commands] == ["gen-jax-ms-0", "gen-jax-ms-1"]


def test_status_describes_the_queued_resource_and_each_slice(fake_bin):
  commands = dry(fake_bin, "status", *TWO)
  assert commands[0][3:6] == ["queued-resources", "describe", "gen-jax-ms"]
  assert [c[5] for c in commands[1:]] == ["gen-jax-ms-0", "gen-jax-ms-1"]
  assert [c[3:5] for c in dry(fake_bin, "status", "--zone=z", "--list")] == [
      ["tpu-vm", "list"], ["queued-resources", "list"]]


# bad input and help


@pytest.mark.parametrize("script, args, named", [
    ("create", (*ONE, "--accelerator-type=v4-8", "--num-slices=0"), "--num-slices"),
    ("create", ("--zone=z", "--accelerator-type=v4-8"), "--name"),
    ("create", (*ONE, "--accelerator-type=v9-8"), "--accelerator-type"),
    ("create", (*ONE, "--accelerator-type=v4-8", "--queued", "--preemptible"), "--preemptible"),
    ("create", ("--name=My_TPU", "--zone=z", "--accelerator-type=v4-8"), "--name"),
    ("install", (*ONE, "--mount-bucket=b/sub/dir"), "--mount-bucket"),
    ("launch", (*ONE, "--config=configs/llm/missing.py", "--workdir=/w"), "--config"),
    ("launch", (*ONE, *CONFIG, "--env=NOT A PAIR"), "--env"),
    ("launch", (*ONE, *CONFIG, "--config.train.num_steps=5"), "go after `--`"),
    ("logs", (*TWO, "--slice=2"), "--slice"),
    ("logs", (*ONE, "--worker=first"), "--worker"),
    ("status", ("--zone=z",), "--name"),
])
def test_bad_input_fails_naming_the_flag(fake_bin, script, args, named):
  result = run(script, *args, "--dry-run", fake=fake_bin)
  assert result.returncode == 2 and result.stdout == ""
  assert len(result.stderr.strip().splitlines()) == 1 and named in result.stderr, result.stderr
  assert not fake_bin[1].exists()


@pytest.mark.parametrize("script", ["create", "install", "launch", "logs", "stop", "status",
                                    "delete"])
def test_help_and_dry_run_without_gcloud_on_path(script):
  result = run(script, "--help", path="")
  assert result.returncode == 0 and "--dry-run" in result.stdout and "--zone" in result.stdout
  args = {"create": ("--accelerator-type=v4-8",), "launch": CONFIG}.get(script, ())
  result = run(script, *TWO, *args, "--dry-run", path="")  # No gcloud or git at all.
  assert result.returncode == 0, result.stderr
  assert printed(result.stdout)
