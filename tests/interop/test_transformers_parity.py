"""Parity with Hugging Face transformers on random tiny LLaMA/Mistral/Mixtral models: its
checkpoints load into gen_jax with equal logits, and gen_jax's exports load into transformers with
equal logits."""
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import interop
from gen_jax.models import Transformer, TransformerConfig
from tests.interop.test_hf_layout import CONFIG, MIXTURE, TEXTS, chat_tokenizer, random_params

torch = pytest.importorskip("torch", reason="parity with transformers needs torch "
                            "(pip install torch==2.13.0)")
transformers = pytest.importorskip("transformers", reason="parity needs transformers "
                                   "(pip install transformers regex)")

TOKENS = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (2, 12))


def _hf_logits(model, tokens) -> np.ndarray:
  with torch.no_grad():
    return model(torch.as_tensor(tokens)).logits.numpy()


def _our_logits(config: TransformerConfig, params, tokens) -> np.ndarray:
  return np.asarray(Transformer(config).apply({"params": params}, jnp.asarray(tokens)))


@pytest.mark.parametrize("model_type,tie,head_dim,sharded", [
    ("llama", False, 8, False), ("llama", True, 12, True), ("mistral", False, 8, False),
    ("mixtral", False, 8, True)])
def test_transformers_checkpoint_loads_with_equal_logits(tmp_path, model_type, tie, head_dim,
                                                         sharded):
  kwargs = dict(vocab_size=CONFIG.vocab_size, hidden_size=32, intermediate_size=48,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                head_dim=head_dim, max_position_embeddings=64, rms_norm_eps=1e-5,
                rope_theta=500.0, tie_word_embeddings=tie)
  if model_type == "mistral":  # A window shorter than the sequence, so that it matters.
    hf_config = transformers.MistralConfig(**kwargs, sliding_window=5)
    model = transformers.MistralForCausalLM(hf_config)
  elif model_type == "mixtral":  # Experts and a window.
    hf_config = transformers.MixtralConfig(**kwargs, sliding_window=5, num_local_experts=4,
                                           num_experts_per_tok=2)
    model = transformers.MixtralForCausalLM(hf_config)
  else:
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs))
  torch.manual_seed(0)
  with torch.no_grad():
    for name, param in model.named_parameters():  # Norm scales too: they start at ones.
      param.copy_(torch.randn_like(param) * (0.3 if param.ndim == 2 else 0.5) + (param.ndim == 1))
  # A small shard size splits the checkpoint and writes model.safetensors.index.json.
  model.save_pretrained(tmp_path, max_shard_size="20KB" if sharded else "1GB")
  assert (tmp_path / "model.safetensors.index.json").exists() == sharded

  loaded = interop.load_hf(str(tmp_path))
  assert (loaded.config.tie_embeddings, loaded.config.head_dim) == (tie, head_dim)
  assert loaded.config.sliding_window == (0 if model_type == "llama" else 5)
  assert loaded.config.num_experts == (4 if model_type == "mixtral" else 0)
  np.testing.assert_allclose(_our_logits(loaded.config, loaded.params, TOKENS),
                             _hf_logits(model.eval(), TOKENS), rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize("tie,sliding_window,moe,expected", [
    (False, 0, {}, "LlamaForCausalLM"), (True, 0, {}, "LlamaForCausalLM"),
    (False, 5, {}, "MistralForCausalLM"), (False, 0, MIXTURE, "MixtralForCausalLM")])
def test_export_loads_in_transformers_with_equal_logits_and_tokenizer(tmp_path, tie,
                                                                      sliding_window, moe,
                                                                      expected):
  config = TransformerConfig(**{**CONFIG.__dict__, "tie_embeddings": tie,
                                "sliding_window": sliding_window, **moe})
  params, tok = random_params(config, seed=1), chat_tokenizer(config.vocab_size)
  interop.export_hf(str(tmp_path), config, params, tok)
  model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
  assert type(model).__name__ == expected
  np.testing.assert_allclose(_hf_logits(model.eval(), TOKENS), _our_logits(config, params, TOKENS),
                             rtol=1e-5, atol=5e-5)
  hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
  assert [hf_tok(t).input_ids for t in TEXTS] == [tok.encode(t) for t in TEXTS]
  messages = interop.conversation("Hi there", system="Be brief.")
  assert hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
      interop.chat_prompt(tok, "Hi there", system="Be brief.")[0]
