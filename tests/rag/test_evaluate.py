"""Retrieval metrics against hand-computed values, the first-sentence question set, and BM25."""
import numpy as np
import pytest

from gen_jax.data.text_sources import Document
from gen_jax.rag.evaluate import (BM25, first_sentence, first_sentence_queries, ranked_sources,
                                  retrieval_metrics)

TOPIC = ('The "while" statement\n*********************\n\n   while_stmt ::= "while" expr\n\n'
         'The "while" statement is used\nfor repeated execution as long as an expression is '
         'true. It stops\nwhen the expression is false.\n')


def test_first_sentence_skips_headings_and_indented_code_and_knows_its_offsets():
  sentence, start, end = first_sentence(TOPIC)
  assert sentence == ('The "while" statement is used for repeated execution as long as an '
                      'expression is true.')
  assert " ".join(TOPIC[start:end].split()) == sentence
  assert first_sentence("Title\n=====\n\n   code only\n") is None


def test_first_sentence_queries_cut_the_query_out_and_keep_one_copy_of_a_text():
  docs = [Document("while", TOPIC), Document("alias", TOPIC),
          Document("short", "Too short here. Then more words follow after it.")]
  queries, answers, indexed = first_sentence_queries(docs, min_words=5)
  assert answers == ["while"] and queries[0].startswith('The "while" statement is used')
  assert [d.name for d in indexed] == ["while", "short"]
  assert "is true." not in indexed[0].text and "It stops" in indexed[0].text
  assert indexed[1].text == docs[2].text  # Its first sentence has 3 words: no query, kept whole.


def test_retrieval_metrics_equal_hand_computed_values():
  rankings = [["a", "b", "c"], ["c", "b"], ["x", "y", "z", "w", "v", "u", "a"], []]
  answers = ["a", "b", "a", "a"]
  metrics = retrieval_metrics(rankings, answers, ks=(1, 2, 10), mrr_cutoff=5)
  # Ranks 1, 2, 7, absent.
  assert metrics == {"recall@1": 0.25, "recall@2": 0.5, "recall@10": 0.75,
                     "mrr@5": pytest.approx((1 + 0.5 + 0 + 0) / 4)}
  assert ranked_sources(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]
  with pytest.raises(ValueError, match="2 rankings for 1 answers"):
    retrieval_metrics([[], []], ["a"])


def test_bm25_ranks_the_text_sharing_the_rare_query_words_first():
  texts = ["the cat sat on the mat", "dogs chase the cat", "exceptions and cleanup handlers",
           "the the the the"]
  bm25 = BM25(texts)
  rows, scores = bm25.search(["cleanup of exceptions", "a cat on a mat"], k=3)
  assert rows.shape == (2, 3) and rows[0, 0] == 2 and rows[1, 0] == 0
  assert np.all(np.diff(scores, axis=1) <= 0)  # Best first.
  assert bm25.search(["the"], k=10)[0].shape == (1, 4)  # k is capped at the corpus size.
