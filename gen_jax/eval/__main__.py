"""Evaluate language models and their outputs.

  python -m gen_jax.eval perplexity --model=gguf:SmolLM2.gguf --text=book.txt [--max_length=512]
  python -m gen_jax.eval text_metrics --predictions=out.txt --references=ref.txt
  python -m gen_jax.eval judge --model=gguf:SmolLM2.gguf --pairs=pairs.jsonl
  python -m gen_jax.eval harness --model=workdir:/tmp/lm --tasks=TASK[,TASK] \
      [--include_path=DIR] [--num_fewshot=N] [--limit=N]
  python -m gen_jax.eval reward_ranking --reward_model=workdir:/tmp/rm [--model=workdir:/tmp/sft] \
      [--num_replies=4] [--kl_coefs=0.3,1,3] [--temperature=1.0] [--limit=N]

--model is a source as in a config's init.source: workdir:DIR, gguf:PATH or hf:DIR.
perplexity: the text's perplexity (per token) and bits per byte, in rolling windows of
--max_length tokens (every token predicted once, with as much context as fits).
text_metrics: BLEU and chrF (sacrebleu) and ROUGE-1/2/L (rouge-score), one line per prediction
and reference. judge: for each {"question", "answer_1", "answer_2"} line, the judge model's
order-averaged preference for answer 1 (gen_jax.eval.judge), and the mean position bias.
harness: lm-evaluation-harness tasks run on the model (gen_jax.eval.lm_eval_backend); few-shot
and chain-of-thought prompts come from the tasks' own templates (e.g. the harness's gsm8k_cot).
reward_ranking: before PPO, what a reward model trained on the synthetic task would teach the
policy (--model, by default the reward run's init.source): --num_replies sampled replies to each
of the task's held-out prompts (task.* of the reward run), checked by code, ranked by the reward
model, and the true reward of the reply each rule picks: the reward model's top one, the policy's
likeliest, and for each --kl_coefs beta the likeliest under PPO's KL-regularized optimum (log p +
score / beta). PPO at a kl_coef can raise the true reward where that pick beats the policy's
likeliest (gen_jax.families.rl.ranking_accuracy).
"""
import json
import sys

from absl import app, flags, logging

_MODEL = flags.DEFINE_string("model", None, "perplexity, judge, harness: workdir:DIR, gguf:PATH "
                             "or hf:DIR.")
_TEXT = flags.DEFINE_string("text", None, "perplexity: a text file.")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 0, "Tokens per forward pass (0: the model's "
                                   "max_seq_len).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Sequences per forward pass.")
_PREDICTIONS = flags.DEFINE_string("predictions", None, "text_metrics: one prediction per line.")
_REFERENCES = flags.DEFINE_string("references", None, "text_metrics: one reference per line.")
_PAIRS = flags.DEFINE_string("pairs", None, "judge: a .jsonl of {question, answer_1, answer_2}.")
_TASKS = flags.DEFINE_list("tasks", None, "harness: task names.")
_INCLUDE_PATH = flags.DEFINE_string("include_path", None, "harness: a folder of task YAMLs.")
_NUM_FEWSHOT = flags.DEFINE_integer("num_fewshot", None, "harness: few-shot examples per prompt.")
_LIMIT = flags.DEFINE_integer("limit", None, "harness: documents per task at most; "
                              "reward_ranking: held-out prompts at most.")
_REWARD_MODEL = flags.DEFINE_string("reward_model", None, "reward_ranking: workdir:DIR of a "
                                    "reward run on the synthetic task.")
_NUM_REPLIES = flags.DEFINE_integer("num_replies", 4, "reward_ranking: replies per prompt.")
_KL_COEFS = flags.DEFINE_list("kl_coefs", ["0.3", "1", "3"], "reward_ranking: PPO KL weights.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "reward_ranking: sampling temperature.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 16, "reward_ranking: reply tokens at most.")

COMMANDS = ("perplexity", "text_metrics", "judge", "harness", "reward_ranking")


def _need(flag) -> str:
  from gen_jax.config import ConfigError
  if not flag.value:
    raise ConfigError(f"--{flag.name}", "required by this command")
  return flag.value


def _scorer():
  from gen_jax.eval.scoring import Scorer
  from gen_jax.families import llm_sources
  loaded = llm_sources.load(_need(_MODEL), "--model")
  try:
    return Scorer(loaded, batch_size=_BATCH_SIZE.value, max_length=_MAX_LENGTH.value)
  except ValueError as e:
    from gen_jax.config import ConfigError
    raise ConfigError("--max_length", str(e)) from e


def _lines(flag) -> list[str]:
  with open(_need(flag), encoding="utf-8") as f:
    return f.read().splitlines()


def run_perplexity() -> None:
  with open(_need(_TEXT), encoding="utf-8") as f:
    text = f.read()
  scorer = _scorer()
  score = scorer.score_texts([text])[0]
  print(f"{_TEXT.value}: {score.tokens} tokens, {score.bytes} bytes, windows of "
        f"{scorer.max_length} tokens\nperplexity {score.perplexity:.4f}\n"
        f"bits per byte {score.bits_per_byte:.4f}")


def run_text_metrics() -> None:
  from gen_jax.eval.text_metrics import text_metrics
  predictions, references = _lines(_PREDICTIONS), _lines(_REFERENCES)
  try:
    metrics = text_metrics(predictions, references)
  except ValueError as e:
    from gen_jax.config import ConfigError
    raise ConfigError("--predictions/--references", str(e)) from e
  print(" ".join(f"{name} {value:.2f}" for name, value in metrics.items()))


def run_judge() -> None:
  from gen_jax.eval.judge import Judge
  with open(_need(_PAIRS), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  items = []
  for number, row in enumerate(rows, 1):
    missing = {"question", "answer_1", "answer_2"} - set(row)
    if missing:
      from gen_jax.config import ConfigError
      raise ConfigError("--pairs", f"line {number} lacks {sorted(missing)}")
    items.append((row["question"], row["answer_1"], row["answer_2"]))
  verdicts = Judge(_scorer()).compare(items)
  for number, verdict in enumerate(verdicts, 1):
    print(f"{number}: P(answer 1 better) {verdict.preference:.3f} (as A {verdict.a_first:.3f}, "
          f"as B {1 - verdict.a_swapped:.3f})")
  bias = sum(v.position_bias for v in verdicts) / len(verdicts)
  wins = sum(v.preference > 0.5 for v in verdicts)
  print(f"answer 1 preferred in {wins} of {len(verdicts)}; mean position bias towards A "
        f"{bias:+.3f}")


def run_harness() -> None:
  import lm_eval
  from lm_eval.tasks import TaskManager
  from gen_jax.eval.lm_eval_backend import GenJaxLM
  model = GenJaxLM(_need(_MODEL), batch_size=_BATCH_SIZE.value, max_length=_MAX_LENGTH.value)
  results = lm_eval.simple_evaluate(model=model, tasks=_need(_TASKS),
                                    task_manager=TaskManager(include_path=_INCLUDE_PATH.value),
                                    num_fewshot=_NUM_FEWSHOT.value, limit=_LIMIT.value)
  for task, metrics in results["results"].items():
    shown = ", ".join(f"{k.split(',')[0]} {v:.4f}" for k, v in metrics.items()
                      if isinstance(v, float) and "_stderr" not in k)
    print(f"{task}: {shown}")


def run_reward_ranking() -> None:
  from gen_jax.config import ConfigError
  from gen_jax.eval.reward_ranking import ranking_report, reward_ranking
  try:
    kl_coefs = tuple(float(beta) for beta in _KL_COEFS.value)
  except ValueError as e:
    raise ConfigError("--kl_coefs", f"{_KL_COEFS.value}: not numbers") from e
  found = reward_ranking(
      _need(_REWARD_MODEL), _MODEL.value or "", num_replies=_NUM_REPLIES.value,
      kl_coefs=kl_coefs, temperature=_TEMPERATURE.value, max_new_tokens=_MAX_NEW_TOKENS.value,
      limit=_LIMIT.value, prompts_per_call=_BATCH_SIZE.value * 8)
  print(ranking_report(found, kl_coefs))


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"give one command: {', '.join(COMMANDS)}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from gen_jax.config import ConfigError
  try:
    {"perplexity": run_perplexity, "text_metrics": run_text_metrics, "judge": run_judge,
     "harness": run_harness, "reward_ranking": run_reward_ranking}[argv[1]]()
  except (ConfigError, ValueError, OSError) as e:
    print(f"Error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
