"""Generated text against references: corpus BLEU and chrF (sacrebleu, its default settings and
tokenizer '13a', so numbers compare with published ones) and ROUGE-1/2/L F1 (rouge-score, Porter
stemming), the mean over pairs."""


def text_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
  """{"bleu", "chrf", "rouge1", "rouge2", "rougeL"} on a 0-100 scale; one reference per prediction."""
  import sacrebleu
  from rouge_score import rouge_scorer
  if len(predictions) != len(references) or not predictions:
    raise ValueError(f"{len(predictions)} predictions for {len(references)} references: give "
                     "one reference per prediction, at least one")
  metrics = {"bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
             "chrf": sacrebleu.corpus_chrf(predictions, [references]).score}
  names = ("rouge1", "rouge2", "rougeL")
  scorer = rouge_scorer.RougeScorer(list(names), use_stemmer=True)
  scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
  for name in names:
    metrics[name] = 100.0 * sum(s[name].fmeasure for s in scores) / len(scores)
  return metrics
