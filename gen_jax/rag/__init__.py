"""Retrieval-augmented generation: a sentence embedder (gen_jax.rag.embedder), ..."""
from gen_jax.rag.embedder import Embedder, l2_normalize, mean_pool

__all__ = ["Embedder", "l2_normalize", "mean_pool"]
