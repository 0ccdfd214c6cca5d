"""GGUF files without the SmolLM2 package: a tiny model written the way llama.cpp's converter writes
one (its Q/K row permutation, a Q8_0 tensor, BPE metadata) loads back to the same params and
tokenizer; unsupported files are refused naming the metadata key."""
import dataclasses
import json

import gguf
import numpy as np
import pytest

from gen_jax import interop
from gen_jax.models import TransformerConfig
from tests.interop.test_hf_layout import CHAT_TEMPLATE, TEXTS, chat_tokenizer, random_params

CONFIG = TransformerConfig(vocab_size=300, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                           head_dim=8, mlp_dim=48, max_seq_len=64, rope_base=500.0, norm_eps=1e-5,
                           tie_embeddings=True)


def llama_cpp_permute(weights: np.ndarray, num_heads: int) -> np.ndarray:
  """convert_hf_to_gguf.py's LlamaModel.permute, as llama.cpp writes attn_q / attn_k rows."""
  return (weights.reshape(num_heads, 2, weights.shape[0] // num_heads // 2, *weights.shape[1:])
          .swapaxes(1, 2).reshape(weights.shape))


def write_gguf(path, config: TransformerConfig, tensors: dict, tok, architecture="llama",
               extra=None):
  """A GGUF file as llama.cpp's converter writes one, from Hugging Face-named tensors."""
  writer = gguf.GGUFWriter(str(path), architecture)
  writer.add_block_count(config.num_layers)
  writer.add_context_length(config.max_seq_len)
  writer.add_embedding_length(config.embed_dim)
  writer.add_feed_forward_length(config.mlp_dim)
  writer.add_head_count(config.num_heads)
  writer.add_head_count_kv(config.num_kv_heads)
  writer.add_rope_freq_base(config.rope_base)
  writer.add_layer_norm_rms_eps(config.norm_eps)
  model = json.loads(tok.hf.to_str())["model"]
  tokens = [tok.hf.id_to_token(i) for i in range(tok.vocab_size)]
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("default")
  writer.add_token_list(tokens)
  writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
  writer.add_token_types([3 if t in (tok.eos_token, tok.pad_token) else 1 for t in tokens])
  writer.add_eos_token_id(tok.eos_id)
  writer.add_pad_token_id(tok.pad_id)
  writer.add_chat_template(CHAT_TEMPLATE)
  for key, value in (extra or {}).items():
    writer.add_uint32(key, value)
  names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_layers)  # gguf's own table.
  for name, weight in tensors.items():
    gguf_name = names.get_name(name, try_suffixes=(".weight",))
    if "attn_q" in gguf_name or "attn_k" in gguf_name:
      heads = config.num_heads if "attn_q" in gguf_name else config.num_kv_heads
      weight = llama_cpp_permute(weight, heads)
    if gguf_name == "token_embd.weight":  # Quantized, as SmolLM2's is.
      quantized = gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q8_0)
      writer.add_tensor(gguf_name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
      writer.add_tensor(gguf_name, weight)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def test_a_llama_cpp_style_file_loads_back_to_the_same_params_and_tokenizer(tmp_path):
  params, tok = random_params(CONFIG), chat_tokenizer(CONFIG.vocab_size)
  tensors = interop.params_to_hf(CONFIG, params)
  write_gguf(tmp_path / "tiny.gguf", CONFIG, tensors, tok)
  loaded = interop.load_gguf(str(tmp_path / "tiny.gguf"))
  # GGUF stores the epsilon as float32, as transformers' GGUF loader reads it too.
  assert loaded.config == dataclasses.replace(CONFIG, norm_eps=float(np.float32(CONFIG.norm_eps)))
  got = interop.params_to_hf(CONFIG, loaded.params)
  assert got.keys() == tensors.keys()
  q8 = gguf.GGMLQuantizationType.Q8_0
  for name, want in tensors.items():
    if name == "model.embed_tokens.weight":  # What Q8_0 keeps of it.
      want = gguf.quants.dequantize(gguf.quants.quantize(want, q8), q8)
      assert np.abs(want - tensors[name]).max() < 0.01
    np.testing.assert_array_equal(got[name], want, err_msg=name)
  assert [loaded.tokenizer.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]
  assert (loaded.tokenizer.eos_id, loaded.tokenizer.pad_id) == (tok.eos_id, tok.pad_id)
  assert loaded.tokenizer.chat_template == CHAT_TEMPLATE


@pytest.mark.parametrize("architecture,extra,message", [
    ("qwen2", {}, "general.architecture: 'qwen2' is not supported (only 'llama')"),
    ("llama", {"llama.expert_count": 8}, "llama.expert_count: 8: mixtures of experts"),
    ("llama", {"llama.rope.dimension_count": 4}, "llama.rope.dimension_count: 4: partial rotary"),
])
def test_unsupported_files_are_refused_naming_the_key(tmp_path, architecture, extra, message):
  path = tmp_path / "bad.gguf"
  config = TransformerConfig(**{**CONFIG.__dict__, "num_layers": 1})
  write_gguf(path, config, interop.params_to_hf(config, random_params(config)),
             chat_tokenizer(CONFIG.vocab_size), architecture, extra)
  with pytest.raises(ValueError, match=f"^{path}: ") as e:
    interop.load_gguf(str(path))
  assert message in str(e.value)
