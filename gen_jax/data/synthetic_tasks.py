"""A SYNTHETIC verifiable task for the alignment stages: multi-digit integer addition.

No human preference data can be had offline, so preferences and rewards here come from a program
that checks answers (the "verifiable rewards" setting of RL for reasoning, e.g. DeepSeek-R1):
demonstrations for SFT, preference pairs for reward modelling and DPO (the wrong answer made the
way people err), and reward functions on decoded text for PPO and GRPO rollouts.

The answer format is "The answer is N." so a reward can check both the number and the format.
"""
import dataclasses
import functools
import random
import re
from typing import Callable, Iterator, Sequence

from gen_jax.config.errors import ConfigError
from gen_jax.data.conversations import PreferencePair

_PREFIX = "The answer is"
_PROMPT = re.compile(r"What is (\d+) \+ (\d+)\?")
_AFTER_PREFIX = re.compile(r"\s*(-?\d+)")
_FORMAT = re.compile(re.escape(_PREFIX) + r" -?\d+\.")


@dataclasses.dataclass(frozen=True)
class Problem:
  """prompt: the question, e.g. "What is 47 + 385?"; answer: its decimal answer, e.g. "432"."""
  prompt: str
  answer: str


def _operand(rng: random.Random, max_digits: int) -> int:
  # Digit count first, then the value: a plain uniform draw below 10**max_digits would make nearly
  # every operand max_digits long and leave short sums (and their edge cases) unseen.
  digits = rng.randint(1, max_digits)
  low = 0 if digits == 1 else 10 ** (digits - 1)
  return rng.randint(low, 10 ** digits - 1)


def _problem_stream(seed: int, max_digits: int) -> Iterator[Problem]:
  """Yields distinct problems forever (until the space is used up), deterministic given seed."""
  rng = random.Random(seed)
  seen = set()
  space = (10 ** max_digits) ** 2
  while len(seen) < space:
    a, b = _operand(rng, max_digits), _operand(rng, max_digits)
    if (a, b) in seen:
      continue
    seen.add((a, b))
    yield Problem(prompt=f"What is {a} + {b}?", answer=str(a + b))


def _check_sizes(max_digits: int, **counts: int) -> None:
  if not isinstance(max_digits, int) or max_digits < 1:
    raise ValueError(f"max_digits must be an integer >= 1, got {max_digits!r}")
  for name, count in counts.items():
    if not isinstance(count, int) or count < 0:
      raise ValueError(f"{name} must be an integer >= 0, got {count!r}")
  space = (10 ** max_digits) ** 2
  if sum(counts.values()) > space:
    raise ValueError(f"{' + '.join(counts)} = {sum(counts.values())} distinct problems asked for, "
                     f"but operands of at most {max_digits} digit(s) give only {space}")


def arithmetic_problems(num_problems: int, *, seed: int, max_digits: int = 2) -> list[Problem]:
  """`num_problems` distinct addition problems, deterministic given `seed`.

  Each operand has a digit count drawn uniformly from 1..max_digits, then a value uniform among
  numbers of that many digits (0 counts as one digit). No prompt repeats within a call.
  """
  _check_sizes(max_digits, num_problems=num_problems)
  stream = _problem_stream(seed, max_digits)
  return [next(stream) for _ in range(num_problems)]


def task_splits(num_train: int, num_eval: int, *, seed: int, max_digits: int
                ) -> tuple[list[Problem], list[Problem]]:
  """Train and held-out problems with no prompt shared between them.

  Both come from one stream of distinct problems, eval first, so the eval set depends only on
  (seed, max_digits, num_eval) and stays the same when num_train changes.
  """
  _check_sizes(max_digits, num_train=num_train, num_eval=num_eval)
  stream = _problem_stream(seed, max_digits)
  eval_problems = [next(stream) for _ in range(num_eval)]
  train_problems = [next(stream) for _ in range(num_train)]
  return train_problems, eval_problems


def format_answer(answer: str) -> str:
  """The reply the model is taught to give: "The answer is {answer}."."""
  return f"{_PREFIX} {answer}."


def extract_answer(completion: str) -> str | None:
  """The integer right after the first "The answer is" (case-sensitive), else None.

  Whitespace between the two is allowed and text after the number ignored. The integer comes back
  normalized (str(int(...))): "007" -> "7", "-0" -> "0", so the value, not its spelling, is judged.
  """
  start = completion.find(_PREFIX)
  if start < 0:
    return None
  match = _AFTER_PREFIX.match(completion, start + len(_PREFIX))
  return str(int(match.group(1))) if match else None


def exact_match_reward(problem: Problem, completion: str) -> float:
  """1.0 if the extracted answer equals the problem's answer, else 0.0."""
  return 1.0 if extract_answer(completion) == problem.answer else 0.0


def format_reward(problem: Problem, completion: str) -> float:
  """1.0 if the stripped completion is exactly "The answer is N." for some integer N, else 0.0."""
  del problem  # The format does not depend on the question.
  return 1.0 if _FORMAT.fullmatch(completion.strip()) else 0.0


REWARD_FUNCTIONS: dict[str, Callable[[Problem, str], float]] = {
    "exact_match": exact_match_reward,
    "format": format_reward,
}


def check_reward_functions(names: str, field: str) -> tuple[str, ...]:
  """Parses a comma-separated list of reward names ("exact_match,format") into a tuple.

  Raises ConfigError(field, ...) when the list is empty, names an unknown function (listing the
  allowed names) or repeats one (a repeat would silently double its weight).
  """
  allowed = ", ".join(sorted(REWARD_FUNCTIONS))
  parsed = tuple(name.strip() for name in names.split(","))
  if parsed == ("",):
    raise ConfigError(field, f"no reward functions named; give a comma-separated list of {allowed}")
  for name in parsed:
    if name not in REWARD_FUNCTIONS:
      raise ConfigError(field, f"unknown reward function {name!r}; allowed: {allowed}")
  repeated = sorted({n for n in parsed if parsed.count(n) > 1})
  if repeated:
    raise ConfigError(field, f"reward function(s) {repeated} named more than once")
  return parsed


def total_reward(names: Sequence[str], problem: Problem, completion: str) -> float:
  """The sum of the named reward functions on one decoded completion."""
  unknown = [n for n in names if n not in REWARD_FUNCTIONS]
  if unknown:
    raise ValueError(f"unknown reward function(s) {unknown}; allowed: {sorted(REWARD_FUNCTIONS)}")
  return float(sum(REWARD_FUNCTIONS[n](problem, completion) for n in names))


def reward_function(names: str, field: str) -> Callable[[Problem, str], float]:
  """(problem, completion) -> the sum of the comma-separated reward functions `names`, checked
  by check_reward_functions (a ConfigError names `field`)."""
  return functools.partial(total_reward, check_reward_functions(names, field))


def problem_prompts(problems: Sequence[Problem]) -> list[list[dict]]:
  """One conversation per problem holding just its user turn: the prompts of RL rollouts."""
  return [[{"role": "user", "content": p.prompt}] for p in problems]


def demonstrations(problems: Sequence[Problem]) -> list[list[dict]]:
  """SFT conversations: [user: prompt, assistant: format_answer(answer)] per problem."""
  return [[{"role": "user", "content": p.prompt},
           {"role": "assistant", "content": format_answer(p.answer)}] for p in problems]


def _operands(problem: Problem) -> tuple[int, int]:
  match = _PROMPT.fullmatch(problem.prompt)
  if match is None:
    raise ValueError(f"not an addition problem of this module: {problem.prompt!r}")
  return int(match.group(1)), int(match.group(2))


def _off_by_one(answer: str, rng: random.Random) -> str:
  """One digit of `answer` moved by one, without changing its length (no leading zero made)."""
  digits = list(answer)
  i = rng.randrange(len(digits))
  d = int(digits[i])
  lowest = 1 if i == 0 and len(digits) > 1 else 0
  steps = [s for s in (-1, 1) if lowest <= d + s <= 9]
  digits[i] = str(d + rng.choice(steps))
  return "".join(digits)


def _dropped_carry(a: int, b: int) -> str:
  """The sum written column by column with every carry forgotten (47 + 385 -> 322)."""
  width = max(len(str(a)), len(str(b)))
  columns = [(a // 10 ** k % 10 + b // 10 ** k % 10) % 10 for k in range(width)]
  return str(int("".join(str(c) for c in reversed(columns))))


def _swapped_digits(answer: str, rng: random.Random) -> str | None:
  """Two neighbouring different digits swapped (432 -> 342), or None where no swap changes it."""
  options = [i for i in range(len(answer) - 1)
             if answer[i] != answer[i + 1] and not (i == 0 and answer[1] == "0")]
  if not options:
    return None
  i = rng.choice(options)
  return answer[:i] + answer[i + 1] + answer[i] + answer[i + 2:]


def _wrong_answer(problem: Problem, rng: random.Random) -> str:
  a, b = _operands(problem)
  candidates = [_off_by_one(problem.answer, rng), _dropped_carry(a, b),
                _swapped_digits(problem.answer, rng)]
  # A carry-free sum has no carry to drop, and some answers have no swap that changes them.
  candidates = [c for c in candidates if c is not None and c != problem.answer]
  return rng.choice(candidates)  # Off by one always differs, so this is never empty.


def preference_pairs(problems: Sequence[Problem], *, seed: int,
                     replies: Sequence[Sequence[str]] | None = None) -> list[PreferencePair]:
  """SYNTHETIC preference pairs: the right formatted answer over a wrong one.

  The wrong one is the first reply of replies[i] (a model's own replies to problem i) that
  exact_match_reward rejects; where there is none (or no replies), one of the mistakes people make
  adding by hand: one digit off by one, a dropped carry, or two neighbouring digits swapped, in the
  answer format, so a preference model must judge the number, not the form. Never the right
  answer. Deterministic given `seed`, the order of `problems` and the replies.
  """
  rng = random.Random(seed)
  replies = replies if replies is not None else [()] * len(problems)
  if len(replies) != len(problems):
    raise ValueError(f"{len(replies)} lists of replies for {len(problems)} problems")
  pairs = []
  for problem, own in zip(problems, replies):
    wrong = [r for r in own if not exact_match_reward(problem, r)]
    rule_made = format_answer(_wrong_answer(problem, rng))  # Drawn always: a stable rng stream.
    pairs.append(PreferencePair(prompt=[{"role": "user", "content": problem.prompt}],
                                chosen=format_answer(problem.answer),
                                rejected=wrong[0] if wrong else rule_made))
  return pairs


def mirrored_pairs(pairs: Sequence[PreferencePair], *, max_digits: int,
                   excluded: frozenset[str] = frozenset()) -> list[PreferencePair]:
  """SYNTHETIC pairs that mirror `pairs`: for a pair on a + b whose rejected reply answers n, the
  sibling problem whose answer n is (a + (n - a), else (n - b) + b) with "The answer is n."
  chosen and "The answer is a + b." rejected.

  Each wrong answer of `pairs` thus is also a right one, so nothing about an answer alone (its
  last digit, its length) says which reply is preferred, and a reward model must read the
  question. Without them a policy optimized against the model learns such shortcuts: the rejected
  replies of a model's own mistakes end in some digits more often than right answers do
  (docs/BENCHMARKS.md). Skipped: a rejected reply with no answer, a sibling whose operand falls
  outside 0..10**max_digits - 1, and a sibling whose prompt is in `excluded` (held-out prompts).
  """
  limit = 10 ** max_digits
  mirrored = []
  for pair in pairs:
    (a, b), wrong = _operands(Problem(pair.prompt[-1]["content"], "")), extract_answer(pair.rejected)
    if wrong is None:
      continue
    n = int(wrong)
    for x, y in ((a, n - a), (n - b, b)):
      prompt = f"What is {x} + {y}?"
      if 0 <= x < limit and 0 <= y < limit and prompt not in excluded:
        mirrored.append(PreferencePair(prompt=[{"role": "user", "content": prompt}],
                                       chosen=format_answer(str(n)),
                                       rejected=format_answer(str(a + b))))
        break
  return mirrored
