"""Packing tokenized documents into fixed-length training windows with segment ids.

Documents are concatenated, each followed by the end-of-text token, and cut into windows of
`seq_len + 1` tokens with stride `seq_len`, so every token is a target exactly once. Within a window
each document gets its own segment id (1, 2, ...) and positions that restart at 0; attention masks
and the loss use them so nothing crosses a document boundary. The final partial window is padded
with segment 0, which counts for nothing.

Chat examples (`pack_examples`) are packed whole instead: a conversation is never cut between
windows, and a loss mask says which of its tokens are targets (the assistant's, not the prompt's).
"""
import numpy as np


def power_of_two_bucket(n: int, *, minimum: int, maximum: int | None = None) -> int:
  """The padded size for n items: the next power of two >= n, at least `minimum` and at most
  `maximum` (None: no cap). Padding to a few such sizes keeps jitted code from recompiling for
  every new length."""
  size = max(minimum, 1 << max(n - 1, 0).bit_length())
  return size if maximum is None else min(maximum, size)


def pack_documents(token_docs: list[list[int]], eos_id: int, pad_id: int, seq_len: int
                   ) -> dict[str, np.ndarray]:
  """Packs token lists into windows.

  Args:
    token_docs: tokenized documents, without end-of-text.
    eos_id, pad_id: special token ids.
    seq_len: model context; windows hold seq_len + 1 tokens (inputs plus the shifted target).
  Returns:
    dict of int32 arrays [num_windows, seq_len + 1]: tokens, segment_ids (0 = padding), positions,
    loss_mask (1 on every real token: all of a document is a target).
  """
  lengths = np.array([len(d) + 1 for d in token_docs], dtype=np.int64)
  stream = np.empty(int(lengths.sum()), dtype=np.int32)
  doc_of = np.repeat(np.arange(len(token_docs), dtype=np.int64), lengths)
  offset = 0
  for doc, n in zip(token_docs, lengths):
    stream[offset:offset + n - 1] = doc
    stream[offset + n - 1] = eos_id
    offset += n

  num_windows = max(1, -(-(len(stream) - 1) // seq_len))  # ceil; the last one may be padded
  starts = np.arange(num_windows) * seq_len
  index = starts[:, None] + np.arange(seq_len + 1)[None, :]  # [w, L+1]
  valid = index < len(stream)
  index = np.minimum(index, len(stream) - 1)
  tokens = np.where(valid, stream[index], pad_id).astype(np.int32)
  docs = doc_of[index]
  segment_ids = np.where(valid, docs - docs[:, :1] + 1, 0).astype(np.int32)
  # Position = offset from the first token of the same segment in this window.
  col = np.broadcast_to(np.arange(seq_len + 1), index.shape)
  new_segment = np.concatenate([np.ones((num_windows, 1), bool), docs[:, 1:] != docs[:, :-1]], 1)
  segment_start = np.maximum.accumulate(np.where(new_segment, col, 0), axis=1)
  positions = np.where(valid, col - segment_start, 0).astype(np.int32)
  return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions,
          "loss_mask": (segment_ids != 0).astype(np.int32)}


def pack_examples(examples: list[tuple[list[int], list[int]]], pad_id: int, seq_len: int, *,
                  one_per_window: bool = False) -> tuple[dict[str, np.ndarray], int]:
  """Packs (token ids, loss mask) examples whole into windows of seq_len + 1 tokens, in order: an
  example that does not fit in the current window's room starts the next window; one longer than
  a window is cut to its first seq_len + 1 tokens.

  Args:
    examples: (ids, mask) pairs of equal length; mask[j] = 1 makes token j a target.
    pad_id: the padding token id.
    seq_len: model context; windows hold seq_len + 1 tokens.
    one_per_window: each example in a window of its own, padded (window i is example i: rows
      that must line up, such as the two responses of a preference pair).
  Returns:
    (the arrays of `pack_documents`, with loss_mask from the examples, 0 on padding; how many
    examples were cut).
  """
  width = seq_len + 1
  windows: list[list[tuple[list[int], list[int]]]] = [[]]
  room, cut = width, 0
  for ids, mask in examples:
    if len(ids) != len(mask):
      raise ValueError(f"an example has {len(ids)} tokens but a loss mask of {len(mask)}")
    if len(ids) > width:
      ids, mask, cut = ids[:width], mask[:width], cut + 1
    if len(ids) > room or (one_per_window and windows[-1]):
      windows.append([])
      room = width
    windows[-1].append((ids, mask))
    room -= len(ids)
  arrays = {name: np.zeros((len(windows), width), np.int32)
            for name in ("tokens", "segment_ids", "positions", "loss_mask")}
  arrays["tokens"][:] = pad_id
  for w, window in enumerate(windows):
    start = 0
    for segment, (ids, mask) in enumerate(window, 1):
      end = start + len(ids)
      arrays["tokens"][w, start:end] = ids
      arrays["segment_ids"][w, start:end] = segment
      arrays["positions"][w, start:end] = np.arange(len(ids))
      arrays["loss_mask"][w, start:end] = mask
      start = end
  return arrays, cut
