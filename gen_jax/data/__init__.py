"""Input data: text sources, the tokenizer, packing, image sources and Grain pipelines."""
from gen_jax.data.images import ImageData, load_images, split_examples
from gen_jax.data.packing import pack_documents, pack_examples
from gen_jax.data.pipeline import EXAMPLE_WEIGHT, eval_batches, host_pipelines, train_dataset
from gen_jax.data.text_sources import Document, load_documents, split_documents
from gen_jax.data.tokenizer import Tokenizer, train_bpe

__all__ = [
    "Document",
    "EXAMPLE_WEIGHT",
    "ImageData",
    "Tokenizer",
    "eval_batches",
    "host_pipelines",
    "load_documents",
    "load_images",
    "pack_documents",
    "pack_examples",
    "split_documents",
    "split_examples",
    "train_bpe",
    "train_dataset",
]
