"""Pairwise LLM-as-judge with position swapping.

A judge model reads a question and two answers and is scored on the next token: the verdict is
P("A") / (P("A") + P("B")), its log-likelihoods from gen_jax.eval.scoring (no sampling, so no
parse failures). Judges favour one position; asking both orders and averaging the answer's
probability over them cancels that bias: the preference for answer 1 is
(P(A | 1 first) + P(B | 1 second)) / 2, so preference(1, 2) + preference(2, 1) = 1 and two
identical answers get exactly 1/2. The position bias is how much the judge favours "A" over both
orders.
"""
import dataclasses
import math

from gen_jax.eval.scoring import Scorer

TEMPLATE = ("Which answer to the question is better: more correct, more helpful, clearer? Reply "
            "with one letter, A or B.\n\nQuestion: {question}\n\nAnswer A: {first}\n\nAnswer B: "
            "{second}")


@dataclasses.dataclass(frozen=True)
class Verdict:
  """preference: P(answer 1 is better), order-averaged; a_first, a_swapped: P("A") when answer 1
  is A and when it is B; position_bias: the judge's mean P("A") over both orders less 1/2."""
  preference: float
  a_first: float
  a_swapped: float

  @property
  def position_bias(self) -> float:
    return (self.a_first + self.a_swapped) / 2 - 0.5


class Judge:
  """A language model (a Scorer) asked which of two answers is better."""

  def __init__(self, scorer: Scorer, template: str = TEMPLATE):
    self.scorer, self.template = scorer, template
    self.chat = scorer.tokenizer.chat_template is not None

  def _context(self, question: str, first: str, second: str) -> tuple[str, tuple[str, str]]:
    text = self.template.format(question=question, first=first, second=second)
    if not self.chat:
      return text + "\n\nThe better answer is", (" A", " B")
    from gen_jax.interop import chat_prompt
    return chat_prompt(self.scorer.tokenizer, text)[0], ("A", "B")

  def prob_a(self, items: list[tuple[str, str, str]]) -> list[float]:
    """P("A") / (P("A") + P("B")) for each (question, answer A, answer B)."""
    pairs = []
    for question, first, second in items:
      context, (a, b) = self._context(question, first, second)
      pairs += [(context, a), (context, b)]
    scores = [log_prob for log_prob, _ in self.scorer.loglikelihood(pairs)]
    return [1.0 / (1.0 + math.exp(scores[i + 1] - scores[i])) for i in range(0, len(scores), 2)]

  def compare(self, items: list[tuple[str, str, str]]) -> list[Verdict]:
    """A verdict for each (question, answer 1, answer 2), asked in both orders."""
    probs = self.prob_a([x for q, one, two in items for x in ((q, one, two), (q, two, one))])
    return [Verdict((probs[i] + 1.0 - probs[i + 1]) / 2, probs[i], probs[i + 1])
            for i in range(0, len(probs), 2)]
