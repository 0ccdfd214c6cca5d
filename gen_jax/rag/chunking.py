"""Documents cut into overlapping chunks of tokens, each keeping its source and character offsets.

A chunk is a window of `chunk_tokens` tokens; the next window starts `chunk_tokens -
overlap_tokens` tokens later. Chunk i spans the characters [start_i, end_i): start_0 = 0, start_i
the first character of its first token, end_i the first character of the token after its window
(the end of the text for the last chunk). So the parts [start_i, start_(i+1)) tile the source:
every character, whitespace between tokens too, lies in exactly one chunk outside the overlaps.
"""
import dataclasses

import tokenizers


@dataclasses.dataclass(frozen=True)
class Chunk:
  """text == the source's text[start:end] (character offsets)."""
  text: str
  source: str
  start: int
  end: int


def chunk_text(text: str, source: str, tokenizer: tokenizers.Tokenizer, *, chunk_tokens: int,
               overlap_tokens: int) -> list[Chunk]:
  """The chunks of one document (none for text without tokens).

  Args:
    tokenizer: whose tokens are counted (the embedder's, so a chunk fits its context); it must
      report character offsets (every `tokenizers` tokenizer does).
    chunk_tokens: tokens per chunk, > 0; overlap_tokens: shared with the next chunk, in
      [0, chunk_tokens).
  """
  if chunk_tokens <= 0:
    raise ValueError(f"chunk_tokens={chunk_tokens}: must be positive")
  if not 0 <= overlap_tokens < chunk_tokens:
    raise ValueError(f"overlap_tokens={overlap_tokens}: must be in [0, chunk_tokens="
                     f"{chunk_tokens})")
  if tokenizer.truncation is not None:  # It must see every token (an embedder's truncates).
    tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())
    tokenizer.no_truncation()
  # Token start characters, each once: a character a byte-level tokenizer splits into several
  # tokens counts as one (a chunk never cuts a character; WordPiece gives one token each).
  starts = sorted({o[0] for o in tokenizer.encode(text, add_special_tokens=False).offsets
                   if o[1] > o[0]})
  if not starts:
    return []
  stride = chunk_tokens - overlap_tokens
  firsts = list(range(0, max(len(starts) - overlap_tokens, 1), stride))
  chunks = []
  for i, first in enumerate(firsts):
    begin = 0 if i == 0 else starts[first]
    end = starts[first + chunk_tokens] if i + 1 < len(firsts) else len(text)
    chunks.append(Chunk(text[begin:end], source, begin, end))
  return chunks
