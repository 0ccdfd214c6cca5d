"""Byte-level BPE tokenizer (Hugging Face `tokenizers`), trained on the training split.

Byte-level means every string round-trips exactly: no unknown tokens, no normalization.
"""
import os
from typing import Iterable

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

END_OF_TEXT = "<|endoftext|>"  # Separates documents; the model learns to emit it at a document's end.
PAD = "<|pad|>"
SPECIAL_TOKENS = (PAD, END_OF_TEXT)
TOKENIZER_FILE = "tokenizer.json"


class Tokenizer:
  """A thin wrapper naming the ids the rest of gen_jax needs."""

  def __init__(self, hf_tokenizer: tokenizers.Tokenizer):
    self.hf = hf_tokenizer
    self.pad_id = hf_tokenizer.token_to_id(PAD)
    self.eos_id = hf_tokenizer.token_to_id(END_OF_TEXT)
    if self.pad_id is None or self.eos_id is None:
      raise ValueError(f"tokenizer lacks the special tokens {SPECIAL_TOKENS}")

  @property
  def vocab_size(self) -> int:
    return self.hf.get_vocab_size()

  def encode(self, text: str) -> list[int]:
    return self.hf.encode(text).ids

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self.hf.encode_batch(texts)]

  def decode(self, ids: Iterable[int]) -> str:
    return self.hf.decode(list(ids), skip_special_tokens=False)

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    self.hf.save(os.path.join(directory, TOKENIZER_FILE))

  @classmethod
  def load(cls, directory: str) -> "Tokenizer":
    return cls(tokenizers.Tokenizer.from_file(os.path.join(directory, TOKENIZER_FILE)))


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
  """Trains a byte-level BPE with at most `vocab_size` tokens (256 bytes + specials + merges)."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  return Tokenizer(tok)
