"""Chat examples for fine-tuning: the template's text, with a loss mask on the assistant's turns."""
import pytest

from gen_jax import data, interop

TEXTS = ["What is AI? Artificial intelligence is the study of thinking machines.",
         "What is 12 + 35? The answer is 47."] * 20
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is AI?"},
    {"role": "assistant", "content": "Thinking machines."},
    {"role": "user", "content": "And 12 + 35?"},
    {"role": "assistant", "content": "The answer is 47."},
]


@pytest.fixture(scope="module")
def tok():
  return data.train_bpe(TEXTS, vocab_size=300)  # Ours: ChatML turn markers and template.


def test_mask_covers_each_assistant_turn_up_to_its_end_of_turn_token(tok):
  ids, mask = interop.encode_chat(tok, CONVERSATION)
  assert len(ids) == len(mask)
  assert tok.decode(ids) == (
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is AI?<|im_end|>\n"
      "<|im_start|>assistant\nThinking machines.<|im_end|>\n<|im_start|>user\nAnd 12 + 35?"
      "<|im_end|>\n<|im_start|>assistant\nThe answer is 47.<|im_end|>\n")
  runs, current = [], []
  for token, weight in zip(ids, mask):
    if weight:
      current.append(token)
    elif current:
      runs, current = runs + [current], []
  runs += [current] if current else []
  # What the model writes: the text and the end-of-turn token, not the newline after it.
  assert [tok.decode(run) for run in runs] == ["Thinking machines.<|im_end|>",
                                               "The answer is 47.<|im_end|>"]


def test_the_prompt_tokens_are_those_a_chat_request_sends(tok):
  ids, mask = interop.encode_chat(tok, CONVERSATION[:3])
  prompt_text, end_of_turn = interop.chat_prompt(tok, "What is AI?", system="Be brief.")
  prompt = tok.encode(prompt_text, add_special_tokens=False)
  assert ids[:len(prompt)] == prompt and not any(mask[:len(prompt)]) and all(mask[len(prompt):-1])
  assert end_of_turn == tok.hf.token_to_id("<|im_end|>") and end_of_turn in ids[len(prompt):]


def test_templates_that_hide_where_a_turn_starts_are_refused(tok):
  # Renders each message's text only once the conversation ends, so a turn does not extend its
  # prompt: no mask could be right.
  odd = ("{% if add_generation_prompt %}{{ 'go:' }}{% else %}"
         "{% for m in messages %}{{ m['content'] }}|{% endfor %}{% endif %}")
  with pytest.raises(ValueError, match="assistant turn 2 does not extend the conversation"):
    interop.encode_chat(data.Tokenizer(tok.hf, chat_template=odd), CONVERSATION)
  with pytest.raises(ValueError, match="the tokenizer has no chat template"):
    interop.encode_chat(data.Tokenizer(tok.hf), CONVERSATION)
