"""Every config file and preset validates and builds; each bad field fails naming itself."""
import glob
import importlib.util
import json

import jax
import pytest

from gen_jax import config as config_lib
from gen_jax import families, parallel
from gen_jax.config.presets import set_field
from gen_jax.train import abstract_train_state, validate
from tests.conftest import REPO_ROOT, tiny_config

CONFIG_FILES = sorted(glob.glob(str(REPO_ROOT / "configs" / "**" / "*.py"), recursive=True))


def _presets(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return sorted(module.PRESETS)


CASES = [(path, preset) for path in CONFIG_FILES for preset in _presets(path)]


def test_config_files_exist():
  assert len(CASES) >= 6 and any("llm" in p for p, _ in CASES) and any("vae" in p for p, _ in CASES)


@pytest.mark.parametrize("path,preset", CASES, ids=[f"{p.split('configs/')[1]}:{s}" for p, s in CASES])
def test_every_preset_validates_and_builds_its_sharded_state_shapes(path, preset):
  config = config_lib.load_config_file(f"{path}:{preset}")
  assert config.preset == preset and config.is_locked
  # A stage that reads an earlier stage's workdir (PPO's reward model, a VQ prior's VQ-VAE) names
  # the field; its own tests run it on a real one.
  earlier = getattr(families.get(config.family), "EARLIER_STAGE_FIELD", None)
  section, field = earlier.split(".") if earlier else (None, None)
  if earlier is not None and not config[section][field]:
    with pytest.raises(config_lib.ConfigError, match=f"{earlier}: is empty"):
      validate(config)
    return
  validate(config)
  mesh = parallel.make_mesh(config.mesh)  # 8 fake devices, with the preset's own mesh axes.
  family = families.get(config.family)
  layout = abstract_train_state(family.param_spec(config), config, mesh)
  num_params = sum(x.size for x in jax.tree.leaves(layout.abstract.params))
  assert num_params > 0
  if preset == "1b":
    assert 0.9e9 < num_params < 1.3e9
  if preset == "7b":
    assert num_params == 6_738_415_616  # Llama-2-7B's published count.
  if preset == "125m":
    assert 0.08e9 < num_params < 0.2e9


def test_unknown_preset_and_unknown_field():
  with pytest.raises(config_lib.ConfigError, match=r"unknown preset 'huge'; choose one of \['125m', '1b', '7b', 'small', 'tiny'\]"):
    config_lib.load_config_file(f"{REPO_ROOT}/configs/llm/pretrain.py:huge")
  config = tiny_config()
  with pytest.raises(config_lib.ConfigError, match=r"model.num_layer: no such field"):
    set_field(config, "model.num_layer", 3)
  with pytest.raises(config_lib.ConfigError, match=r"model.num_layers: .*type"):
    set_field(config, "model.num_layers", "four")


BAD = [
    ({"model.num_heads": 3}, "model.num_heads: 3 heads do not divide model.embed_dim=64"),
    ({"model.num_kv_heads": 3}, "model.num_kv_heads: 3 kv heads do not divide model.num_heads=4"),
    ({"model.dtype": "float16"}, r"model.dtype: 'float16' is not one of \('float32', 'bfloat16'\)"),
    ({"model.head_dim": 15}, "model.head_dim: must be even for RoPE"),
    ({"model.vocab_size": 100}, "model.vocab_size: must be at least 260"),
    ({"model.attention_impl": "flash"}, "model.attention_impl: 'flash' is not one of"),
    ({"model.attention_impl": "pallas_mosaic:dq=fast"},
     "model.attention_impl: 'pallas_mosaic:dq=fast': setting 'dq=fast' is not one of"),
    ({"objective.logit_chunks": 5}, "objective.logit_chunks: must be 0 or a positive divisor of model.max_seq_len=64, got 5"),
    ({"objective.logit_chunks": 4, "distill.teacher": "workdir:/nonexistent"},
     "objective.logit_chunks: distillation compares whole next-token distributions"),
    ({"model.sequence_parallel": "striped_ring", "model.sliding_window": 8},
     "model.sequence_parallel: 'striped_ring' has no sliding window"),
    ({"model.sequence_parallel": "ulysses"}, "model.sequence_parallel: 'ulysses' is not one of"),
    ({"model.sequence_parallel": "ring", "model.attention_impl": "cudnn"},
     "model.sequence_parallel: 'ring' combines blocks by their log-sum-exp"),
    ({"train.batch_size": 6, "train.grad_accum_steps": 4}, "train.batch_size: 6 is not divisible by train.minibatches=1 x train.grad_accum_steps=4"),
    ({"train.num_steps": 0}, "train.num_steps: must be positive"),
    ({"optimizer.learning_rate": -1.0}, "optimizer.learning_rate: must be positive"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, "mesh: at most one axis may be -1"),
    ({"data.eval_fraction": 1.5}, r"data.eval_fraction: must be in \(0, 1\)"),
    ({"model.weight_bits": 3}, r"model.weight_bits: 3 is not one of"),
    ({"model.scan_unroll": 0}, r"model.scan_unroll: must be an integer in \[1, model.num_layers="),
    ({"model.num_experts": 4, "model.expert_group_size": -8}, "model.expert_group_size: must be >= 0"),
    ({"model.weight_bits": 8}, "model.weight_bits: training updates float kernels, got 8"),
    ({"logical_axis_rules": (("batch", "dataa"),)}, "logical_axis_rules: rule .* names mesh axis 'dataa'"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_llm_fields_fail_validation_naming_the_field(overrides, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    validate(tiny_config(**overrides))


def test_bad_vae_fields_fail_validation_naming_the_field():
  with pytest.raises(config_lib.ConfigError, match=r"model.image_size: 8 must be divisible by 2\*\*len\(model.channels\) = 16"):
    validate(tiny_config("configs/vae/digits.py", **{"model.channels": (8, 8, 8, 8)}))


def test_batch_not_divisible_by_data_parallel_size_fails_before_compiling(tmp_path):
  from gen_jax.train import train_and_evaluate
  config = tiny_config(**{"train.batch_size": 12})  # 8 fake devices, data=-1: 12 % 8 != 0
  with pytest.raises(config_lib.ConfigError, match=r"train.batch_size: microbatch 12 .* not divisible by the data-parallel size 8"):
    train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_mesh_sizes_must_match_the_devices():
  config = tiny_config(**{"mesh.data": 3})
  with pytest.raises(config_lib.ConfigError, match="mesh: axis sizes .* use 3 devices but 8 are used"):
    parallel.make_mesh(config.mesh)
  config = tiny_config(**{"mesh.tensor": 3})
  with pytest.raises(config_lib.ConfigError, match="mesh.data: the other axes use 3 devices"):
    parallel.make_mesh(config.mesh)


@pytest.mark.parametrize("family", families.FAMILIES)
def test_a_saved_config_missing_later_fields_loads_them_with_their_defaults(tmp_path, family):
  from gen_jax.config.bases import FAMILY_BASES
  base = json.loads(FAMILY_BASES[family]().to_json())
  old = json.loads(json.dumps(base))
  section = sorted(k for k, v in old.items() if isinstance(v, dict) and k != "train")[-1]
  del old["train"]["ema_decay"], old[section]
  old["train"]["num_steps"] = 12345  # What the saved run set is kept.
  with open(tmp_path / "config.json", "w") as f:
    json.dump(old, f)
  loaded = json.loads(config_lib.load_workdir_config(str(tmp_path)).to_json())
  assert loaded == {**base, "train": {**base["train"], "num_steps": 12345}}


def test_set_fields_reads_literals_and_names_a_bad_field():
  from gen_jax.config.presets import set_fields
  config = config_lib.load_config_file(f"{REPO_ROOT}/configs/llm/pretrain.py:tiny")
  set_fields(config, ["train.batch_size=4", "model.attention_impl=pallas_mosaic:dq=atomic",
                      "model.remat=dots"])
  assert (config.train.batch_size, config.model.attention_impl, config.model.remat) == (
      4, "pallas_mosaic:dq=atomic", "dots")
  with pytest.raises(config_lib.ConfigError, match="model.no_such_field: no such field"):
    set_fields(config, ["model.no_such_field=1"])
