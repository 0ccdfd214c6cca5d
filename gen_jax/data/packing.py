"""Packing tokenized documents into fixed-length training windows with segment ids.

Documents are concatenated, each followed by the end-of-text token, and cut into windows of
`seq_len + 1` tokens with stride `seq_len`, so every token is a target exactly once. Within a window
each document gets its own segment id (1, 2, ...) and positions that restart at 0; attention masks
and the loss use them so nothing crosses a document boundary. The final partial window is padded
with segment 0, which counts for nothing.
"""
import numpy as np


def pack_documents(token_docs: list[list[int]], eos_id: int, pad_id: int, seq_len: int
                   ) -> dict[str, np.ndarray]:
  """Packs token lists into windows.

  Args:
    token_docs: tokenized documents, without end-of-text.
    eos_id, pad_id: special token ids.
    seq_len: model context; windows hold seq_len + 1 tokens (inputs plus the shifted target).
  Returns:
    dict of int32 arrays [num_windows, seq_len + 1]: tokens, segment_ids (0 = padding), positions.
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
  return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}
