"""Retrieval evaluation: recall@k and MRR of ranked sources against known answers, a question set
made from documents' own first sentences, and a BM25 baseline.

The FIRST-SENTENCE question set (first_sentence_queries): each document's first sentence of prose
is the query, the document is its answer, and that sentence is removed from what gets indexed,
so a hit has to come from the rest of the document. These are not questions people asked; they
are a cheap, checkable stand-in that ranks retrievers against each other on real text.

Retrievers return chunks; a document's rank is the rank of its best chunk (sources in order of
first appearance), so metrics count documents, not chunks.
"""
import re

import numpy as np

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
HEADING_RULE = re.compile(r"^[\s*=\-~^#]+$")  # reStructuredText underlines.


def first_sentence(text: str) -> tuple[str, int, int] | None:
  """(the first sentence of the first prose paragraph, its start and end characters), or None.

  A paragraph is prose when it is not a heading (a line over a rule of * = - ~ ^ #) and not
  indented (code, grammar); its first sentence ends at . ! or ? followed by whitespace.
  """
  for match in re.finditer(r"[^\n](?:.|\n(?!\s*\n))*", text):  # Paragraphs: blank-line separated.
    paragraph, start = match.group(), match.start()
    lines = paragraph.split("\n")
    if paragraph[0].isspace() or any(HEADING_RULE.match(line) for line in lines):
      continue
    end = SENTENCE_END.search(paragraph)
    sentence = paragraph[:end.start()] if end else paragraph
    return " ".join(sentence.split()), start, start + len(sentence)
  return None


def first_sentence_queries(documents, *, min_words: int = 5):
  """(queries, answers, documents to index): for each document with a first sentence of at least
  min_words words, that sentence (whitespace collapsed) as a query and the document's name as its
  answer; every document is indexed with that sentence cut out. Documents with the same text are
  kept once (the first name), so each query has one right answer."""
  from gen_jax.data.text_sources import Document
  queries, answers, indexed, seen = [], [], [], set()
  for doc in documents:
    if doc.text in seen:
      continue
    seen.add(doc.text)
    found = first_sentence(doc.text)
    if found and len(found[0].split()) >= min_words:
      sentence, start, end = found
      queries.append(sentence)
      answers.append(doc.name)
      indexed.append(Document(doc.name, doc.text[:start] + doc.text[end:]))
    else:
      indexed.append(doc)
  return queries, answers, indexed


def ranked_sources(sources_by_rank: list[str]) -> list[str]:
  """Distinct sources in order of first appearance (a source ranks where its best chunk does)."""
  return list(dict.fromkeys(sources_by_rank))


def retrieval_metrics(rankings: list[list[str]], answers: list[str], ks=(1, 5, 10),
                      mrr_cutoff: int = 10) -> dict[str, float]:
  """recall@k (the share of queries whose answer is among the first k sources) and MRR@cutoff
  (the mean of 1 / the answer's rank, 0 past the cutoff) of ranked distinct sources."""
  if len(rankings) != len(answers) or not answers:
    raise ValueError(f"{len(rankings)} rankings for {len(answers)} answers")
  ranks = np.array([ranking.index(a) + 1 if a in ranking else np.inf
                    for ranking, a in zip(rankings, answers)])
  metrics = {f"recall@{k}": float((ranks <= k).mean()) for k in ks}
  metrics[f"mrr@{mrr_cutoff}"] = float(np.where(ranks <= mrr_cutoff, 1.0 / ranks, 0.0).mean())
  return metrics


class BM25:
  """Okapi BM25 over texts (bm25s, its default parameters k1=1.5, b=0.75), English stopwords
  removed, no stemming: the lexical baseline."""

  def __init__(self, texts: list[str]):
    import bm25s
    self._bm25s = bm25s
    self.retriever = bm25s.BM25()
    self.retriever.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False),
                         show_progress=False)
    self.size = len(texts)

  def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows [q, k] int, scores [q, k] float) of the k best texts per query, best first."""
    tokens = self._bm25s.tokenize(list(queries), stopwords="en", show_progress=False)
    rows, scores = self.retriever.retrieve(tokens, k=min(k, self.size), show_progress=False)
    return np.asarray(rows), np.asarray(scores)
