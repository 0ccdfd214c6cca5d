"""Text sources: pydoc, files, folders, globs, tfds; and the errors for bad input."""
import pytest

from gen_jax import data
from gen_jax.config import ConfigError


def test_pydoc_is_real_text():
  docs = data.load_documents("pydoc")
  assert len(docs) > 50 and sum(len(d.text) for d in docs) > 300_000
  assert any("for" in d.name for d in docs)


def test_file_folder_and_glob(tmp_path):
  (tmp_path / "a.txt").write_text("alpha text")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "b.txt").write_text("beta text")
  (tmp_path / "c.md").write_text("gamma")
  assert [d.text for d in data.load_documents(str(tmp_path / "a.txt"))] == ["alpha text"]
  assert {d.text for d in data.load_documents(str(tmp_path))} == {"alpha text", "beta text", "gamma"}
  assert {d.text for d in data.load_documents(str(tmp_path / "**" / "*.txt"))} == {"alpha text", "beta text"}


def test_missing_path_empty_corpus_and_bad_bytes_are_named(tmp_path):
  with pytest.raises(ConfigError, match=r"data.source: no such file or folder: '/nonexistent/x.txt'"):
    data.load_documents("/nonexistent/x.txt")
  (tmp_path / "empty.txt").write_text("  \n")
  with pytest.raises(ConfigError, match="empty corpus"):
    data.load_documents(str(tmp_path / "empty.txt"))
  bad = tmp_path / "bad.txt"
  bad.write_bytes(b"good text \xff\xfe more")
  with pytest.raises(ConfigError, match=r"bad.txt is not UTF-8 text: undecodable byte 0xff at byte offset 10"):
    data.load_documents(str(bad))
  with pytest.raises(ConfigError, match="matches no files"):
    data.load_documents(str(tmp_path / "*.nothing"))


def test_split_holds_out_the_last_fraction_of_characters():
  docs = [data.Document("a", "x" * 60), data.Document("b", "y" * 40)]
  train, held_out = data.split_documents(docs, 0.25)
  assert "".join(d.text for d in train) == "x" * 60 + "y" * 15
  assert "".join(d.text for d in held_out) == "y" * 25
  assert [d.name for d in held_out] == ["b[15:]"]


def test_tfds_source_reads_a_locally_prepared_dataset(tmp_path):
  import tensorflow_datasets as tfds

  class TinyTextCorpus(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(["first document", "second document"]),
              "test": self._generate_examples(["held out"])}

    def _generate_examples(self, texts):
      for i, t in enumerate(texts):
        yield i, {"text": t}

  TinyTextCorpus(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  docs = data.load_documents("tfds:tiny_text_corpus", tfds_data_dir=str(tmp_path))
  assert sorted(d.text for d in docs) == ["first document", "second document"]
  docs = data.load_documents("tfds:tiny_text_corpus", tfds_split="test", tfds_data_dir=str(tmp_path))
  assert [d.text for d in docs] == ["held out"]
  with pytest.raises(ConfigError, match="data.tfds_text_key: .* no feature 'body'"):
    data.load_documents("tfds:tiny_text_corpus", tfds_text_key="body", tfds_data_dir=str(tmp_path))
  with pytest.raises(ConfigError, match="data.source: cannot open tfds dataset 'no_such_ds'"):
    data.load_documents("tfds:no_such_ds", tfds_data_dir=str(tmp_path))
