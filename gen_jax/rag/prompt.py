"""A grounded prompt: the question after numbered passages, within a token budget.

Passages go in best first. The first one that does not fit whole is cut at one of its own token
boundaries (under the generator's tokenizer, so never inside a token or a character) to the
longest prefix that fits, and nothing after it goes in. The budget is checked on the final
prompt's own encoding (chat template included), not on a sum of parts, since tokens can merge
across the places where parts meet.
"""
import dataclasses
from typing import Callable

from gen_jax.rag.store import Hit

INSTRUCTION = ("Answer the question using only the numbered passages below, and cite the "
               "passages you use by their numbers, like [1]. If the passages do not answer the "
               "question, say that you do not know.")


@dataclasses.dataclass(frozen=True)
class Prompt:
  """text: what the generator is asked (the user turn); ids: its encoding, len(ids) <= the budget;
  passages: the hits in it, numbered from 1 in this order, with the text each contributed (the
  last one's may be a prefix of its hit's text: `cut`)."""
  text: str
  ids: list[int]
  passages: list[tuple[Hit, str]]
  cut: bool


def render(question: str, passages: list[tuple[Hit, str]]) -> str:
  blocks = [f"[{n}] {hit.source} (characters {hit.start}-{hit.start + len(text)})\n{text}"
            for n, (hit, text) in enumerate(passages, 1)]
  return "\n\n".join([INSTRUCTION, *blocks, f"Question: {question}"])


def token_boundaries(text: str, offsets: list[tuple[int, int]]) -> list[int]:
  """The character positions where one of text's tokens starts, and len(text), ascending; 0
  excluded (a cut there keeps nothing)."""
  return sorted({start for start, end in offsets if end > start and start > 0} | {len(text)})


def build_prompt(question: str, hits: list[Hit], *, encode: Callable[[str], list[int]],
                 token_offsets: Callable[[str], list[tuple[int, int]]], max_tokens: int
                 ) -> Prompt:
  """The prompt holding as many of `hits` (best first) as fit in max_tokens.

  Args:
    encode: text -> the ids the generator receives for it (its chat template applied, if any).
    token_offsets: text -> the (start, end) characters of each of its tokens, by the
      generator's tokenizer.
    max_tokens: the budget for len(ids): the generator's context less its answer's tokens.
  Raises:
    ValueError: the question and instruction alone do not fit.
  """
  chosen: list[tuple[Hit, str]] = []

  def fits(candidate):
    return len(encode(render(question, candidate))) <= max_tokens

  if not fits(chosen):
    raise ValueError(f"--question: the question and the instruction take "
                     f"{len(encode(render(question, chosen)))} tokens, more than the prompt's "
                     f"budget of {max_tokens} (the context less --max_new_tokens)")
  cut = False
  for hit in hits:
    if fits(chosen + [(hit, hit.text)]):
      chosen.append((hit, hit.text))
      continue
    # The longest prefix ending at a token boundary that fits: binary search over boundaries
    # (a longer prefix never takes fewer tokens).
    bounds = token_boundaries(hit.text, token_offsets(hit.text))
    low, high = 0, len(bounds)  # bounds[:low] fit; bounds[high:] do not.
    while low < high:
      mid = (low + high) // 2
      if fits(chosen + [(hit, hit.text[:bounds[mid]])]):
        low = mid + 1
      else:
        high = mid
    if low:
      chosen.append((hit, hit.text[:bounds[low - 1]]))
      cut = True
    break
  text = render(question, chosen)
  return Prompt(text, encode(text), chosen, cut)
