"""The byte-level BPE tokenizer: exact round trips, special tokens, save and load."""
from gen_jax import data

TEXTS = ["def f(x):\n    return x + 1\n", "Emma Woodhouse, handsome, clever, and rich.",
         "naïve café — 東京 🙂", "   leading spaces\ttabs\r\n"]


def test_round_trip_is_exact_and_survives_save_and_load(tmp_path):
  tok = data.train_bpe(TEXTS * 20, vocab_size=300)
  assert tok.vocab_size <= 300
  assert {tok.pad_id, tok.eos_id} == {0, 1}
  for text in TEXTS + ["unseen text with ünïcödé and \x00 bytes"]:
    assert tok.decode(tok.encode(text)) == text
  tok.save(str(tmp_path))
  loaded = data.Tokenizer.load(str(tmp_path))
  assert [loaded.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]


def test_merges_shorten_the_text():
  tok = data.train_bpe(TEXTS * 50, vocab_size=400)
  text = TEXTS[1]
  assert len(tok.encode(text)) < len(text.encode("utf-8")) / 2
