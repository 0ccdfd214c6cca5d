"""Byte-level BPE tokenizer (Hugging Face `tokenizers`), trained on the training split.

Byte-level means every string round-trips exactly: no unknown tokens, no normalization. The same
wrapper also carries a pretrained model's tokenizer (`gen_jax.interop`), whose special tokens have
other names and which may come with a chat template.
"""
import json
import os
from typing import Iterable

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

END_OF_TEXT = "<|endoftext|>"  # Separates documents; the model learns to emit it at a document's end.
PAD = "<|pad|>"
# ChatML's turn markers (the format SmolLM2 and Qwen use): every tokenizer we train has them, so a
# model pretrained here can be fine-tuned into a chat model (configs/llm/sft.py) without resizing
# its embeddings.
TURN_START, TURN_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, END_OF_TEXT, TURN_START, TURN_END)
# <|im_start|>role\ncontent<|im_end|>\n per message; the generation prompt opens an assistant turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
TOKENIZER_FILE = "tokenizer.json"
# The special tokens' names and the chat template, in transformers' format (AutoTokenizer reads it).
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


class Tokenizer:
  """A thin wrapper naming the ids the rest of gen_jax needs.

  Args:
    hf_tokenizer: the `tokenizers.Tokenizer`.
    eos_token, pad_token: names of the end-of-text and padding tokens (ours by default; a pretrained
      model names its own, and may pad with its eos token).
    bos_token: the beginning-of-text token, or None where the model has none.
    chat_template: the model's jinja2 chat template (`gen_jax.interop.chat_template`), or None.
  """

  def __init__(self, hf_tokenizer: tokenizers.Tokenizer, *, eos_token: str = END_OF_TEXT,
               pad_token: str = PAD, bos_token: str | None = None,
               chat_template: str | None = None):
    self.hf = hf_tokenizer
    self.eos_token, self.pad_token, self.bos_token = eos_token, pad_token, bos_token
    self.eos_id = self._id(eos_token, "eos_token")
    self.pad_id = self._id(pad_token, "pad_token")
    self.bos_id = None if bos_token is None else self._id(bos_token, "bos_token")
    self.chat_template = chat_template

  def _id(self, token: str, role: str) -> int:
    token_id = self.hf.token_to_id(token)
    if token_id is None:
      raise ValueError(f"{role}: the tokenizer has no token {token!r}")
    return token_id

  @property
  def special_tokens(self) -> dict[str, str | None]:
    """{"bos_token", "eos_token", "pad_token"}: the names a chat template refers to them by."""
    return {"bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token}

  @property
  def added_tokens(self) -> list[str]:
    """The tokens matched whole in text (special and user-defined), e.g. "<|im_start|>"."""
    return [t.content for t in self.hf.get_added_tokens_decoder().values()]

  @property
  def vocab_size(self) -> int:
    return self.hf.get_vocab_size()

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of `text`; add_special_tokens=False leaves out what the post-processor adds
    (a pretrained model's BOS), e.g. for a rendered chat template that writes it itself."""
    return self.hf.encode(text, add_special_tokens=add_special_tokens).ids

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self.hf.encode_batch(texts)]

  def decode(self, ids: Iterable[int]) -> str:
    return self.hf.decode(list(ids), skip_special_tokens=False)

  def save(self, directory: str) -> None:
    """tokenizer.json and tokenizer_config.json (special tokens, chat template), as transformers'
    AutoTokenizer reads them."""
    os.makedirs(directory, exist_ok=True)
    self.hf.save(os.path.join(directory, TOKENIZER_FILE))
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", **self.special_tokens}
    if self.chat_template is not None:
      settings["chat_template"] = self.chat_template
    with open(os.path.join(directory, TOKENIZER_CONFIG_FILE), "w") as f:
      json.dump(settings, f, indent=2)

  @classmethod
  def load(cls, directory: str) -> "Tokenizer":
    """The tokenizer `save` wrote (a workdir's): ours, or a pretrained model's with its special
    tokens and chat template."""
    hf = tokenizers.Tokenizer.from_file(os.path.join(directory, TOKENIZER_FILE))
    config_path = os.path.join(directory, TOKENIZER_CONFIG_FILE)
    if not os.path.exists(config_path):  # Saved before the names were written: ours.
      return cls(hf)
    with open(config_path) as f:
      settings = json.load(f)
    return cls(hf, eos_token=settings["eos_token"], pad_token=settings["pad_token"],
               bos_token=settings["bos_token"], chat_template=settings.get("chat_template"))


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
  """Trains a byte-level BPE with at most `vocab_size` tokens (256 bytes + specials + merges), with
  ChatML's turn markers and chat template."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  return Tokenizer(tok, chat_template=CHATML_TEMPLATE)
