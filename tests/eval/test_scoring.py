"""Log-likelihood scoring against an independent full forward pass, rolling windows that predict
every token once, and gen_jax as an lm-evaluation-harness model on the repo's local tasks."""
import math
import os

import jax
import numpy as np
import pytest

from gen_jax import data
from gen_jax.eval.scoring import Scorer, TextScore
from gen_jax.families.llm_sources import Loaded
from gen_jax.models import Transformer, TransformerConfig
from tests.conftest import REPO_ROOT, tiny_config

TEXTS = ["What is 12 + 35? The answer is 47.", "Naïve café — 東京 🙂 tabs\tand spaces.",
         "The for statement iterates over the items of any sequence, in order."]


@pytest.fixture(scope="module")
def loaded():
  """A random tiny model (max_seq_len 64) and a byte-level BPE: scoring is checked, not quality."""
  config = tiny_config()
  tok = data.train_bpe(TEXTS * 5, vocab_size=300)
  model_config = TransformerConfig.from_config(config.model)
  params = Transformer(model_config).init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
  return Loaded(model_config, jax.tree.map(np.asarray, params), tok)


def _reference_log_prob(loaded, ids, n):
  """log p(ids[n:] | ids[:n]) from one unpadded forward pass, summed in float64."""
  logits = Transformer(loaded.config).apply({"params": loaded.params}, np.asarray([ids[:-1]]))
  log_probs = np.asarray(jax.nn.log_softmax(np.asarray(logits[0], np.float64)))
  return sum(log_probs[t - 1, ids[t]] for t in range(n, len(ids)))


def test_loglikelihood_equals_a_full_forward_pass(loaded):
  scorer = Scorer(loaded, batch_size=4)
  pairs = [("What is 12 + 35?", " The answer is 47."), ("", "Naïve café"),
           ("The for statement ", "iterates"), ("x", " y z")]  # Trailing space moves over.
  rows = scorer.continuation_rows(pairs)
  for (context, continuation), (ids, n) in zip(pairs, rows):
    assert ids[0] == scorer.prefix_id
    assert loaded.tokenizer.decode(ids[n:]).strip() == continuation.strip()
  scores = scorer.loglikelihood(pairs)
  for (ids, n), (log_prob, _) in zip(rows, scores):
    np.testing.assert_allclose(log_prob, _reference_log_prob(loaded, ids, n), rtol=1e-5)


def test_is_greedy_is_true_exactly_when_argmax_decoding_gives_the_continuation(loaded):
  scorer = Scorer(loaded, batch_size=2)
  context = [scorer.prefix_id] + scorer.encode("What is 12 + 35?")
  logits = Transformer(loaded.config).apply({"params": loaded.params}, np.asarray([context]))
  best = int(np.argmax(logits[0, -1]))
  other = (best + 1) % loaded.config.vocab_size
  (_, greedy), (_, not_greedy) = scorer.span_scores([(context + [best], len(context)),
                                                     (context + [other], len(context))])
  assert greedy and not not_greedy


@pytest.mark.parametrize("max_length", [8, 13, 64])
def test_rolling_windows_predict_every_token_once_with_the_most_context(loaded, max_length):
  scorer = Scorer(loaded, max_length=max_length, batch_size=3)
  ids = scorer.encode(" ".join(TEXTS))
  rows = scorer.rolling_rows(ids)
  predicted = [t for row, n in rows for t in row[n:]]
  assert predicted == ids
  for row, n in rows:
    assert len(row) <= max_length + 1
  for row, n in rows[1:]:
    assert len(row) == max_length + 1 or row[0] == scorer.prefix_id  # Full context when it can.
  score = scorer.score_texts([" ".join(TEXTS)])[0]
  expected = sum(_reference_log_prob(loaded, row, n) for row, n in rows)
  np.testing.assert_allclose(score.log_likelihood, expected, rtol=1e-5)
  assert score.tokens == len(ids) and score.bytes == len(" ".join(TEXTS).encode())


def test_perplexity_and_bits_per_byte_follow_their_definitions():
  score = TextScore(log_likelihood=-20.0, tokens=10, bytes=40)
  assert math.isclose(score.perplexity, math.exp(2.0))
  assert math.isclose(score.bits_per_byte, 20.0 / math.log(2) / 40)


def test_the_harness_backend_scores_as_gen_jax_does_and_runs_local_tasks(loaded, monkeypatch):
  pytest.importorskip("lm_eval")
  import lm_eval
  from lm_eval.api.instance import Instance
  from lm_eval.tasks import TaskManager

  from gen_jax.eval.lm_eval_backend import GenJaxLM
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.chdir(REPO_ROOT)  # The tasks' data_files are relative to the repository root.
  model = GenJaxLM(loaded=loaded, batch_size=4)
  scorer = Scorer(loaded)
  pairs = [("Question: What is 1 + 5?\nAnswer:", " 6"), ("Question: What is 1 + 5?\nAnswer:", " 12")]
  requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
  for (log_prob, greedy), (ids, n) in zip(model.loglikelihood(requests),
                                          scorer.continuation_rows(pairs)):
    np.testing.assert_allclose(log_prob, _reference_log_prob(loaded, ids, n), rtol=1e-5)
  results = lm_eval.simple_evaluate(
      model=model, tasks=["gen_jax_arithmetic_mc", "gen_jax_arithmetic_gen",
                          "gen_jax_arithmetic_ppl", "gen_jax_arithmetic_cot"],
      task_manager=TaskManager(include_path=os.path.join(REPO_ROOT, "tests", "eval", "tasks")),
      limit=6, log_samples=True)
  samples, results = results["samples"], results["results"]
  # Chain-of-thought few-shot: the worked exemplars come before each question.
  cot_prompt = samples["gen_jax_arithmetic_cot"][0]["arguments"][0][0]
  assert cot_prompt.startswith("Q: What is 27 + 15?\nA: Ones: 7 + 5 = 12, write 2 and carry 1.")
  assert "The answer is 69.\n\nQ: What is" in cot_prompt
  assert results["gen_jax_arithmetic_cot"]["exact_match,answer"] == 0.0
  assert 0.0 <= results["gen_jax_arithmetic_mc"]["acc,none"] <= 1.0
  assert results["gen_jax_arithmetic_gen"]["exact_match,none"] == 0.0  # A random model.
  # bits_per_byte from the harness equals our own over the same six documents.
  docs = [line for line in open(os.path.join(REPO_ROOT, "tests", "eval", "tasks",
                                             "arithmetic.jsonl"))][:6]
  import json
  texts = [f"{d['question']} The answer is {d['target']}." for d in map(json.loads, docs)]
  ours = scorer.score_texts(texts)
  expected = -sum(s.log_likelihood for s in ours) / math.log(2) / sum(s.bytes for s in ours)
  np.testing.assert_allclose(results["gen_jax_arithmetic_ppl"]["bits_per_byte,none"], expected,
                             rtol=1e-5)


def test_the_judge_is_order_symmetric_and_exactly_even_on_identical_answers(loaded):
  from gen_jax.eval.judge import Judge
  judge = Judge(Scorer(loaded, batch_size=4))
  question, one, two = "What is 12 + 35?", "The answer is 47.", "The answer is 48."
  same, forward, backward = judge.compare([(question, one, one), (question, one, two),
                                           (question, two, one)])
  assert same.preference == pytest.approx(0.5, abs=1e-12)
  assert forward.preference + backward.preference == pytest.approx(1.0, abs=1e-12)
  # The verdict in each order is P("A") against P("B") after the judge prompt.
  prob_a = judge.prob_a([(question, one, two)])[0]
  context, (a, b) = judge._context(question, one, two)
  (log_a, _), (log_b, _) = judge.scorer.loglikelihood([(context, a), (context, b)])
  assert prob_a == pytest.approx(math.exp(log_a) / (math.exp(log_a) + math.exp(log_b)))
  assert forward.a_first == pytest.approx(prob_a)
  assert forward.position_bias == pytest.approx((forward.a_first + forward.a_swapped) / 2 - 0.5)
