"""Packing: every token once, segment ids per document, positions restarting per document."""
import numpy as np
import pytest

from gen_jax import data


def test_packing_keeps_every_token_and_separates_documents():
  docs = [[10, 11, 12], [20, 21, 22, 23, 24, 25, 26], [30]]
  eos, pad, seq_len = 1, 0, 4
  packed = data.pack_documents(docs, eos, pad, seq_len)
  tokens, seg, pos = packed["tokens"], packed["segment_ids"], packed["positions"]
  assert tokens.shape == seg.shape == pos.shape == (4, seq_len + 1)
  stream = [10, 11, 12, 1, 20, 21, 22, 23, 24, 25, 26, 1, 30, 1]
  # Windows overlap by one token (stride seq_len): every stream token after the first is a target once.
  targets = [t for w in range(4) for t, s in zip(tokens[w, 1:], seg[w, 1:]) if s]
  assert targets == stream[1:]
  np.testing.assert_array_equal(tokens[0], [10, 11, 12, 1, 20])
  np.testing.assert_array_equal(seg[0], [1, 1, 1, 1, 2])
  np.testing.assert_array_equal(pos[0], [0, 1, 2, 3, 0])
  # A document continued from the previous window restarts at position 0 with segment 1.
  np.testing.assert_array_equal(tokens[1], [20, 21, 22, 23, 24])
  np.testing.assert_array_equal(seg[1], [1, 1, 1, 1, 1])
  np.testing.assert_array_equal(pos[1], [0, 1, 2, 3, 4])
  # The last window is padded with segment 0.
  np.testing.assert_array_equal(tokens[3], [30, 1, 0, 0, 0])
  np.testing.assert_array_equal(seg[3], [1, 1, 0, 0, 0])


def test_segment_ids_change_exactly_at_end_of_text():
  rng = np.random.default_rng(0)
  docs = [list(rng.integers(2, 50, rng.integers(1, 30))) for _ in range(40)]
  packed = data.pack_documents(docs, 1, 0, 16)
  for tokens, seg in zip(packed["tokens"], packed["segment_ids"]):
    for i in range(1, len(tokens)):
      if seg[i] and seg[i - 1]:
        # A new segment starts exactly after an end-of-text token.
        assert (seg[i] != seg[i - 1]) == (tokens[i - 1] == 1)


def test_examples_are_packed_whole_with_their_loss_masks():
  examples = [([10, 11, 12], [0, 1, 1]), ([20, 21], [0, 1]), ([30, 31, 32, 33], [0, 0, 1, 1]),
              ([40] * 9, [1] * 9)]
  packed, cut = data.pack_examples(examples, pad_id=0, seq_len=5)
  assert cut == 1  # The last is longer than a window of 6 and keeps its first 6 tokens.
  np.testing.assert_array_equal(packed["tokens"], [[10, 11, 12, 20, 21, 0], [30, 31, 32, 33, 0, 0],
                                                   [40] * 6])
  np.testing.assert_array_equal(packed["segment_ids"], [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0],
                                                        [1] * 6])
  np.testing.assert_array_equal(packed["positions"], [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0],
                                                      list(range(6))])
  np.testing.assert_array_equal(packed["loss_mask"], [[0, 1, 1, 0, 1, 0], [0, 0, 1, 1, 0, 0],
                                                      [1] * 6])
  single, _ = data.pack_examples(examples[:2], pad_id=0, seq_len=5, one_per_window=True)
  np.testing.assert_array_equal(single["tokens"], [[10, 11, 12, 0, 0, 0], [20, 21, 0, 0, 0, 0]])
  with pytest.raises(ValueError, match="2 tokens but a loss mask of 1"):
    data.pack_examples([([1, 2], [1])], pad_id=0, seq_len=5)


def test_documents_count_every_real_token():
  packed = data.pack_documents([[5, 6, 7]], eos_id=1, pad_id=0, seq_len=6)
  np.testing.assert_array_equal(packed["loss_mask"], [[1, 1, 1, 1, 0, 0, 0]])


def test_power_of_two_bucket_rounds_up_within_its_bounds():
  from gen_jax.data.packing import power_of_two_bucket
  assert [power_of_two_bucket(n, minimum=16, maximum=256)
          for n in (1, 16, 17, 100, 256, 300)] == [16, 16, 32, 128, 256, 256]
  assert [power_of_two_bucket(n, minimum=1024) for n in (0, 1, 1024, 1025)] == [1024, 1024, 1024,
                                                                                2048]
