"""gen_jax as a model of EleutherAI's lm-evaluation-harness (`pip install lm-eval`).

  lm_eval --model gen_jax --model_args source=gguf:SmolLM2-135M-Instruct.Q4_1.gguf,batch_size=8 \
      --tasks TASK --include_path DIR
  python -m gen_jax.eval harness --model=workdir:/tmp/lm --tasks=TASK --include_path=DIR

`source` is any gen_jax.families.llm_sources spec (workdir:, gguf:, hf:). The requests map onto
gen_jax.eval.scoring.Scorer: loglikelihood -> Scorer.loglikelihood, loglikelihood_rolling ->
Scorer.score_texts, generate_until -> Scorer.generate_until (greedy). Which tasks run depends on
the data you have: the harness's own tasks download their datasets; a task whose YAML points at
local files (dataset_path: json, data_files: ...) runs offline.
"""
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from gen_jax.eval.scoring import Scorer


@register_model("gen_jax")
class GenJaxLM(LM):
  """Args: source (workdir:DIR | gguf:PATH | hf:DIR) or loaded (an llm_sources.Loaded already in
  memory), batch_size, max_length (0: the model's), max_gen_toks (generate_until's default
  budget). Generation is greedy whatever a task's generation_kwargs ask."""

  def __init__(self, source: str = "", batch_size: int = 8, max_length: int = 0,
               max_gen_toks: int = 256, loaded=None):
    super().__init__()
    if (loaded is None) == (not source):
      raise ValueError("give the model as source=KIND:PATH or as loaded=, exactly one")
    if loaded is None:
      from gen_jax.families import llm_sources
      loaded = llm_sources.load(source, "source")
    self.scorer = Scorer(loaded, batch_size=int(batch_size), max_length=int(max_length))
    self.max_gen_toks = int(max_gen_toks)

  @classmethod
  def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
    args = dict(kv.split("=", 1) for kv in arg_string.split(",") if kv)
    extra = {k: v for k, v in (additional_config or {}).items()
             if k in ("batch_size", "max_length") and v is not None}
    return cls(**{**args, **extra})

  def loglikelihood(self, requests) -> list[tuple[float, bool]]:
    return self.scorer.loglikelihood([tuple(r.args) for r in requests])

  def loglikelihood_rolling(self, requests) -> list[float]:
    return [s.log_likelihood for s in self.scorer.score_texts([r.args[0] for r in requests])]

  def generate_until(self, requests) -> list[str]:
    out = []
    for request in requests:  # Requests may differ in stop strings and budgets.
      context, kwargs = request.args
      until = kwargs.get("until", [])
      until = [until] if isinstance(until, str) else list(until)
      out += self.scorer.generate_until(
          [context], until=until, max_new_tokens=int(kwargs.get("max_gen_toks",
                                                                self.max_gen_toks)))
    return out
