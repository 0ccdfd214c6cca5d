"""Grounded answers: retrieve a question's chunks, refuse when none is close enough, otherwise ask
a language model with the chunks as numbered passages and return its answer with the sources.

The generator is any gen_jax language model (a training workdir, a GGUF file such as SmolLM2, a
Hugging Face directory: gen_jax.families.llm_sources), asked through its chat template where it
has one. Answers are greedy.
"""
import dataclasses

from gen_jax.rag.prompt import Prompt, build_prompt
from gen_jax.rag.store import Hit, Store


class Generator:
  """A language model that answers prompts within `context_tokens` tokens in all.

  Args:
    loaded: a gen_jax.families.llm_sources.Loaded (config, params, tokenizer).
    context_tokens: prompt plus answer at most (and at most the model's max_seq_len); 0: the
      model's max_seq_len. A cap keeps the KV cache and the prompt small on a CPU.
    max_new_tokens: the answer's budget.
    system: the chat's system instruction ("" leaves the template's default).
  """

  def __init__(self, loaded, *, context_tokens: int = 0, max_new_tokens: int = 128,
               system: str = ""):
    if context_tokens < 0:
      raise ValueError(f"--context_tokens={context_tokens}: must be >= 0 (0: the model's "
                       "max_seq_len)")
    limit = loaded.config.max_seq_len
    self.context_tokens = min(context_tokens, limit) if context_tokens else limit
    if not 0 < max_new_tokens < self.context_tokens:
      raise ValueError(f"--max_new_tokens={max_new_tokens}: must be in [1, "
                       f"{self.context_tokens}) to leave room for the prompt")
    self.loaded, self.max_new_tokens, self.system = loaded, max_new_tokens, system
    self.tokenizer = loaded.tokenizer
    self.chat = self.tokenizer.chat_template is not None

  @property
  def prompt_budget(self) -> int:
    return self.context_tokens - self.max_new_tokens

  def encode(self, text: str) -> list[int]:
    from gen_jax.families import llm_text
    return llm_text.prompt_ids(self.tokenizer, text, chat=self.chat,
                          system=self.system if self.chat else "")[0]

  def token_offsets(self, text: str) -> list[tuple[int, int]]:
    return self.tokenizer.hf.encode(text, add_special_tokens=False).offsets

  def generate(self, prompt: Prompt) -> str:
    from gen_jax.families import llm_text
    from gen_jax.sampling import SampleRequest
    config = dataclasses.replace(self.loaded.config, max_seq_len=self.context_tokens)
    request = SampleRequest(prompt=prompt.text, max_new_tokens=self.max_new_tokens,
                            chat=self.chat, system=self.system if self.chat else "")
    return llm_text.generate_text(config, self.loaded.params, self.tokenizer, request, echo=False)


@dataclasses.dataclass(frozen=True)
class Answer:
  """text: the model's answer, or the refusal; hits: what retrieval found, best first;
  prompt: what the model was asked (None when it was not: a refusal)."""
  text: str
  hits: list[Hit]
  prompt: Prompt | None

  @property
  def refused(self) -> bool:
    return self.prompt is None

  def sources(self) -> str:
    """The numbered passages of the prompt, as citations."""
    if self.prompt is None:
      return ""
    lines = []
    for n, (hit, text) in enumerate(self.prompt.passages, 1):
      cut = " (cut to fit the context)" if len(text) < len(hit.text) else ""
      lines.append(f"[{n}] {hit.source}, characters {hit.start}-{hit.start + len(text)}, "
                   f"score {hit.score:.3f}{cut}")
    return "\n".join(lines)


def refusal(hits: list[Hit], min_score: float) -> str:
  best = f"the best scores {hits[0].score:.3f}" if hits else "the index is empty"
  return (f"No passage in the index is close enough to the question to answer it from them "
          f"({best}; --min_score={min_score}).")


def respond(question: str, hits: list[Hit], generator, *, min_score: float) -> Answer:
  """The answer from the hits scoring at least min_score (cosine similarity); with none, a
  refusal, and the generator (which may then be None) is not run."""
  relevant = [h for h in hits if h.score >= min_score]
  if not relevant:
    return Answer(refusal(hits, min_score), hits, None)
  prompt = build_prompt(question, relevant, encode=generator.encode,
                        token_offsets=generator.token_offsets,
                        max_tokens=generator.prompt_budget)
  return Answer(generator.generate(prompt), hits, prompt)


def answer(store: Store, generator, question: str, *, k: int = 5, min_score: float = 0.3,
           exact: bool = True) -> Answer:
  """Retrieves k chunks (exact or HNSW search) and responds from them."""
  return respond(question, store.retrieve([question], k, exact=exact)[0], generator,
                 min_score=min_score)
