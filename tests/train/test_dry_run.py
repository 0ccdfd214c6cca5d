"""--dry_run: the real step compiled from shapes; bytes per device follow the mesh."""
import re

import pytest

from gen_jax.train.dry_run import dry_run
from tests.conftest import run_cli, tiny_config


def test_vae_dry_run_reports_the_compiled_step():
  report = dry_run(tiny_config("configs/vae/digits.py", **{"mesh.data": 8}))
  assert report.mesh["data"] == 8
  assert report.parameter_bytes > 0 and report.optimizer_bytes == pytest.approx(
      2 * report.parameter_bytes, rel=0.01)  # Adam's two moments, plus step counters.
  assert report.temp_bytes > 0


def test_llm_dry_run_bytes_shrink_with_fsdp():
  replicated = dry_run(tiny_config(**{"mesh.data": 8}))
  sharded = dry_run(tiny_config(**{"mesh.data": 1, "mesh.fsdp": 8}))
  # Every tiny-model parameter has an `embed` axis of 64, which fsdp=8 splits exactly.
  assert sharded.parameter_bytes * 8 == replicated.parameter_bytes
  assert sharded.argument_bytes < replicated.argument_bytes
  rows = {path: (shape, local) for path, shape, _, local in sharded.shardings}
  shape, local = rows["layers/mlp/wi_gate/kernel"]  # [layers, embed, mlp]
  assert local == (shape[0], shape[1] // 8, shape[2])


def test_a_1b_preset_is_checked_for_a_pod_sized_mesh_from_the_command_line():
  result = run_cli("gen_jax.main", "--config=configs/llm/pretrain.py:1b", "--dry_run",
                   "--dry_run_devices=64", "--config.train.batch_size=64")
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "'fsdp': 64" in out
  # TinyLlama-1.1B: 22 x (4 attention + 3 mlp matrices, 2 norms) + embedding, head, final norm.
  d, f, v, n, k, h = 2048, 5632, 32000, 32, 4, 64
  params = 22 * (d * n * h * 2 + d * k * h * 2 + 3 * d * f + 2 * d) + 2 * v * d + d
  assert params == 1_100_048_384
  per_device = float(re.search(r"parameters\s+([\d.]+) MiB", out).group(1))
  assert per_device == pytest.approx(params * 4 / 64 / 2**20, abs=0.01)
  assert "layers/mlp/wi_gate/kernel" in out


def test_dry_run_config_errors_name_the_field():
  result = run_cli("gen_jax.main", "--config=configs/llm/pretrain.py:tiny", "--dry_run",
                   "--dry_run_devices=8", "--config.mesh.data=3")
  assert result.returncode == 2 and "mesh:" in result.stderr


def test_pretend_devices_are_refused_for_training(tmp_path):
  result = run_cli("gen_jax.main", "--config=configs/llm/pretrain.py:tiny", f"--workdir={tmp_path}",
                   "--dry_run_devices=8")
  assert result.returncode != 0 and "--dry_run_devices needs --dry_run" in result.stderr


def test_a_dry_run_target_is_named_when_unknown_or_uncompilable_here():
  """--dry_run_target compiles for another machine with its own compiler when the plugin for it
  is installed (docs/BENCHMARKS.md: the 1b step for TPU slices); otherwise it says what to install,
  and an unknown target, or one beside --dry_run_devices, is refused by name."""
  import importlib.util
  from gen_jax import parallel
  with pytest.raises(parallel.targets.TargetError, match="target 'a100' is not one of"):
    parallel.targets.compile_only_devices("a100")
  if importlib.util.find_spec("libtpu") is None:
    with pytest.raises(parallel.targets.TargetError, match=r"pip install 'jax\[tpu\]=="):
      dry_run(tiny_config(), target="tpu:v5e:2x2")
  else:  # Where libtpu is installed the tiny model compiles for four v5e chips.
    assert dry_run(tiny_config(**{"mesh.data": -1}), target="tpu:v5e:2x2").platform == "tpu"
  result = run_cli("gen_jax.main", "--config=configs/llm/pretrain.py:tiny", "--dry_run",
                   "--dry_run_target=a100")
  assert result.returncode == 2 and "--dry_run_target: target 'a100'" in result.stderr
  result = run_cli("gen_jax.main", "--config=configs/llm/pretrain.py:tiny", "--dry_run",
                   "--dry_run_devices=8", "--dry_run_target=h200")
  assert result.returncode != 0 and "instead of --dry_run_devices" in result.stderr


@pytest.mark.parametrize("family,fields", [
    ("grpo", {}), ("ppo", {"ppo.reward_functions": "exact_match", "ppo.value_model": "shared"})])
def test_on_policy_dry_runs_compile_experience_and_update_and_logit_chunks_shrink_them(family,
                                                                                     fields):
  """PPO and GRPO compile their whole step (the rollout batch scored into experience, then the
  update) from shapes, sequences at model.max_seq_len; slicing the output layer over the
  positions (objective.logit_chunks, here 5: not a divisor, so padded) shrinks the temporaries."""
  base = {"model.vocab_size": 4096, **fields}
  whole = dry_run(tiny_config(f"configs/llm/{family}.py", **base))
  sliced = dry_run(tiny_config(f"configs/llm/{family}.py", **base, **{"objective.logit_chunks": 5}))
  assert whole.parameter_bytes == sliced.parameter_bytes > 0
  # Measured (jax 0.10.2, XLA:CPU): GRPO 0.37x, PPO 0.85x (its temporaries are mostly the
  # parameter-sized gradient and optimizer buffers of a 4,096-token vocabulary at width 64).
  assert 0 < sliced.temp_bytes < 0.95 * whole.temp_bytes, (sliced.temp_bytes, whole.temp_bytes)
