"""Test setup: 8 fake CPU devices (set before jax is imported) and shared helpers."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from gen_jax.config import load_config_file  # noqa: E402
from gen_jax.config.presets import set_field  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def tiny_config(config_file: str = "configs/llm/pretrain.py", preset: str = "tiny", **overrides):
  """A preset of a repo config file with dotted overrides, e.g. tiny_config(**{"train.num_steps": 3})."""
  config = load_config_file(f"{REPO_ROOT / config_file}:{preset}")
  for dotted, value in overrides.items():
    set_field(config, dotted, value)
  return config


def run_cli(module: str, *args: str, env_extra: dict | None = None, timeout: int = 600,
            **popen) -> subprocess.CompletedProcess:
  """Runs `python -m module args...` from the repo root, capturing output."""
  env = {**os.environ, **(env_extra or {})}
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, **popen)


@pytest.fixture
def repo_root() -> pathlib.Path:
  return REPO_ROOT
