"""Retrieval-augmented generation: a sentence embedder (embedder) and a vector index (index)."""
from gen_jax.rag.embedder import Embedder, l2_normalize, mean_pool
from gen_jax.rag.index import VectorIndex, recall_at_k

__all__ = ["Embedder", "VectorIndex", "l2_normalize", "mean_pool", "recall_at_k"]
