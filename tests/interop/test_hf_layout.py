"""The Hugging Face layout without torch: export -> load is exact, and unsupported configs are
refused naming the config.json field."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import data, interop
from gen_jax.models import Transformer, TransformerConfig

CONFIG = TransformerConfig(vocab_size=300, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                           head_dim=12, mlp_dim=48, max_seq_len=64, rope_base=500.0, norm_eps=1e-5)
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n"
                 "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
TEXTS = ["Emma Woodhouse, handsome, clever, and rich.", "def f(x):\n    return x + 1\n"]


def random_params(config: TransformerConfig, seed: int = 0) -> dict:
  """Random normal params of the Transformer's shapes (from eval_shape: tracing, not running, init),
  norm scales included, which initialize to ones and would hide a mix-up."""
  net = Transformer(config)
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: (0.2 * rng.standard_normal(x.shape)).astype(np.float32),
                      nn.meta.unbox(shapes["params"]))


def chat_tokenizer(vocab_size: int) -> data.Tokenizer:
  tok = data.train_bpe(TEXTS * 20, vocab_size=vocab_size)
  return data.Tokenizer(tok.hf, chat_template=CHAT_TEMPLATE)


# Mixtral routes without capacity: what loading sets (expert_capacity_factor 0).
MIXTURE = {"num_experts": 4, "experts_per_token": 2, "expert_capacity_factor": 0.0}


@pytest.mark.parametrize("tie,sliding_window,moe,model_type", [
    (False, 0, {}, "llama"), (True, 0, {}, "llama"), (False, 8, {}, "mistral"),
    (False, 0, MIXTURE, "mixtral"), (True, 8, {**MIXTURE, "experts_per_token": 1}, "mixtral")])
def test_export_then_load_gives_back_the_same_params_config_and_tokenizer(
    tmp_path, tie, sliding_window, moe, model_type):
  config = TransformerConfig(**{**CONFIG.__dict__, "tie_embeddings": tie,
                                "sliding_window": sliding_window, **moe})
  params, tok = random_params(config), chat_tokenizer(config.vocab_size)
  interop.export_hf(str(tmp_path), config, params, tok)
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["model_type"] == model_type
  loaded = interop.load_hf(str(tmp_path))
  assert loaded.config == config
  assert jax.tree.structure(loaded.params) == jax.tree.structure(params)
  for got, want in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(got, want)
  assert [loaded.tokenizer.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]
  assert (loaded.tokenizer.eos_id, loaded.tokenizer.chat_template) == (tok.eos_id, CHAT_TEMPLATE)


def test_chat_prompt_renders_the_template_and_finds_the_end_of_turn_token():
  tok = chat_tokenizer(300)
  text, end = interop.chat_prompt(tok, "Hi there", system="Be brief.")
  assert text == "system: Be brief.<|endoftext|>\nuser: Hi there<|endoftext|>\nassistant:"
  assert end == tok.eos_id
  llama3 = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
            "{{ m['content'] | trim }}<|eot_id|>{% endfor %}")
  specials = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": None}
  assert interop.end_of_turn_token(llama3, specials, ["<|eot_id|>", "<|end_header_id|>"]) == \
      "<|eot_id|>"
  with pytest.raises(ValueError, match="--chat: the tokenizer has no chat template"):
    interop.chat_prompt(data.Tokenizer(data.train_bpe(TEXTS * 20, vocab_size=300).hf), "Hi")
  strict = "{{ raise_exception('Conversation roles must alternate') }}"
  with pytest.raises(ValueError, match="chat template: Conversation roles must alternate"):
    interop.render(strict, interop.conversation("Hi"), special_tokens=specials)


BASE = {"model_type": "llama", "vocab_size": 300, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.mark.parametrize("change,message", [
    ({"model_type": "qwen2"},
     "model_type: 'qwen2' is not supported; supported: ('llama', 'mistral', 'mixtral')"),
    ({"model_type": "mixtral", "router_jitter_noise": 0.01},
     "router_jitter_noise: 0.01 is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act: 'gelu' is not supported"),
    ({"attention_bias": True}, "attention_bias: true is not supported"),
    ({"mlp_bias": True}, "mlp_bias: true is not supported"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
     "rope_scaling: {'rope_type': 'llama3'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}},
     "rope_parameters.rope_type: 'yarn' is not supported"),
    ({"hidden_size": None}, "hidden_size: missing"),
])
def test_unsupported_configs_are_refused_naming_the_field(change, message):
  hf = {key: value for key, value in {**BASE, **change}.items() if value is not None}
  with pytest.raises(ValueError, match="^config.json: ") as e:
    interop.config_from_hf(hf)
  assert message in str(e.value)


def test_config_reads_both_rope_spellings_and_transformers_defaults():
  old = interop.config_from_hf({**BASE, "rope_theta": 500.0})
  new = interop.config_from_hf({**BASE, "rope_parameters": {"rope_type": "default",
                                                            "rope_theta": 500.0}})
  assert old == new and old.rope_base == 500.0
  # LlamaConfig's defaults: head_dim = hidden / heads, untied, eps 1e-6, 2048 positions.
  assert (old.head_dim, old.tie_embeddings, old.norm_eps, old.max_seq_len) == (8, False, 1e-6, 2048)
  assert interop.config_from_hf({**BASE, "model_type": "mistral"}).sliding_window == 4096
  # MixtralConfig's: 8 experts, top-2, no window, theta 1e6; and gen_jax's no-drop capacity.
  mixtral = interop.config_from_hf({**BASE, "model_type": "mixtral"})
  assert (mixtral.num_experts, mixtral.experts_per_token, mixtral.expert_capacity_factor,
          mixtral.sliding_window, mixtral.rope_base, mixtral.norm_eps) == (8, 2, 0.0, 0, 1e6, 1e-5)


def test_bad_tensors_are_named(tmp_path):
  params = random_params(CONFIG)
  tensors = interop.params_to_hf(CONFIG, params)
  with pytest.raises(ValueError, match="'model.layers.1.self_attn.q_proj.bias' is not part"):
    interop.params_from_hf(CONFIG, {**tensors, "model.layers.1.self_attn.q_proj.bias":
                                    np.zeros(48, np.float32)})
  missing = {k: v for k, v in tensors.items() if k != "model.norm.weight"}
  with pytest.raises(ValueError, match="'model.norm.weight' is missing"):
    interop.params_from_hf(CONFIG, missing)
  transposed = {**tensors, "model.layers.0.mlp.up_proj.weight":
                tensors["model.layers.0.mlp.up_proj.weight"].T}
  with pytest.raises(ValueError, match=r"up_proj.weight' has shape \(32, 48\); the config expects "
                                       r"\(48, 32\)"):
    interop.params_from_hf(CONFIG, transposed)
  with pytest.raises(ValueError, match="model.weight_bits: 8: int-quantized weights"):
    interop.export_hf(str(tmp_path / "int8"), TransformerConfig(
        **{**CONFIG.__dict__, "weight_bits": 8, "weight_group_size": 16}), params)
  assert not os.path.exists(tmp_path / "int8")  # Refused before anything is written.
  moe = TransformerConfig(**{**CONFIG.__dict__, **MIXTURE})
  experts = interop.params_to_hf(moe, random_params(moe))
  del experts["model.layers.1.block_sparse_moe.experts.3.w2.weight"]
  with pytest.raises(ValueError, match="'model.layers.1.block_sparse_moe.experts.3.w2.weight' is "
                                       "missing"):
    interop.params_from_hf(moe, experts)
  os.makedirs(tmp_path / "empty")
  with pytest.raises(ValueError, match="has no config.json"):
    interop.load_hf(str(tmp_path / "empty"))
