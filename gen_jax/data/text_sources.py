"""Where text comes from: `config.data.source` resolved to a list of documents.

Sources: `pydoc` (Python's own documentation topics, always installed), a text file, a folder or a
glob of text files, or `tfds:NAME` (a tensorflow-datasets text dataset prepared locally).
"""
import dataclasses
import glob
import os

from gen_jax.config.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Document:
  name: str  # Where it came from: a topic name, file path or tfds record index.
  text: str


def _decode(path: str, raw: bytes, field: str) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ConfigError(field, f"{path} is not UTF-8 text: undecodable byte 0x{raw[e.start]:02x} at "
                      f"byte offset {e.start}") from None


def _pydoc_documents() -> list[Document]:
  from pydoc_data import topics  # Ships with CPython.
  return [Document(f"pydoc:{name}", topics.topics[name]) for name in sorted(topics.topics)]


def _file_documents(source: str, field: str) -> list[Document]:
  if os.path.isdir(source):
    paths = sorted(p for p in glob.glob(os.path.join(source, "**", "*"), recursive=True)
                   if os.path.isfile(p) and not os.path.basename(p).startswith("."))
  elif any(ch in source for ch in "*?["):
    paths = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p))
  elif os.path.isfile(source):
    paths = [source]
  else:
    raise ConfigError(field, f"no such file or folder: {source!r} (expected 'pydoc', 'tfds:NAME', "
                      "a text file, a folder or a glob of text files)")
  if not paths:
    raise ConfigError(field, f"{source!r} matches no files")
  docs = []
  for path in paths:
    with open(path, "rb") as f:
      docs.append(Document(path, _decode(path, f.read(), field)))
  return docs


def _tfds_documents(name: str, split: str, text_key: str, data_dir: str, field: str) -> list[Document]:
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
    source = builder.as_data_source(split=split)
  except Exception as e:  # tfds raises many types; the user needs the dataset and split named.
    raise ConfigError(field, f"cannot open tfds dataset {name!r} split {split!r} "
                      f"(data_dir={data_dir!r}): {e}") from None
  docs = []
  for i in range(len(source)):
    record = source[i]
    if text_key not in record:
      raise ConfigError("data.tfds_text_key", f"tfds:{name} records have no feature {text_key!r}; "
                        f"features are {sorted(record)}")
    text = record[text_key]
    if isinstance(text, bytes):
      text = _decode(f"tfds:{name}[{split}][{i}]", text, field)
    docs.append(Document(f"tfds:{name}[{split}][{i}]", str(text)))
  return docs


def load_documents(source: str, *, field: str = "data.source", tfds_split: str = "train",
                   tfds_text_key: str = "text", tfds_data_dir: str = "") -> list[Document]:
  """Reads every document of `source`; raises ConfigError(field, ...) for a bad or empty source."""
  if source == "pydoc":
    docs = _pydoc_documents()
  elif source.startswith("tfds:"):
    docs = _tfds_documents(source[len("tfds:"):], tfds_split, tfds_text_key, tfds_data_dir, field)
  else:
    docs = _file_documents(os.path.expanduser(source), field)
  docs = [d for d in docs if d.text.strip()]
  if not docs:
    raise ConfigError(field, f"{source!r} holds no text (empty corpus)")
  return docs


def split_documents(docs: list[Document], eval_fraction: float
                    ) -> tuple[list[Document], list[Document]]:
  """Holds out the last `eval_fraction` of the characters, cutting one document if needed.

  Splitting by characters rather than whole documents works the same for one long file and for
  thousands of short topics.
  """
  total = sum(len(d.text) for d in docs)
  cut = int(round(total * (1.0 - eval_fraction)))
  train, held_out, seen = [], [], 0
  for doc in docs:
    if seen + len(doc.text) <= cut:
      train.append(doc)
    elif seen >= cut:
      held_out.append(doc)
    else:
      k = cut - seen
      train.append(Document(doc.name, doc.text[:k]))
      held_out.append(Document(doc.name + f"[{k}:]", doc.text[k:]))
    seen += len(doc.text)
  return train, held_out
