"""The synthetic addition task: problems, answer extraction, rewards and preference pairs."""
import re

import pytest

from gen_jax.config import ConfigError
from gen_jax.data import synthetic_tasks as st
from gen_jax.data.conversations import PreferencePair

_PROMPT = re.compile(r"What is (\d+) \+ (\d+)\?")


def _operands(problem):
  a, b = _PROMPT.fullmatch(problem.prompt).groups()
  return a, b


def test_problems_are_correct_bounded_distinct_and_deterministic():
  problems = st.arithmetic_problems(500, seed=3, max_digits=3)
  assert problems == st.arithmetic_problems(500, seed=3, max_digits=3)
  assert problems != st.arithmetic_problems(500, seed=4, max_digits=3)
  assert len({p.prompt for p in problems}) == 500
  lengths = set()
  for p in problems:
    a, b = _operands(p)
    assert int(p.answer) == int(a) + int(b) and p.answer == str(int(a) + int(b))
    assert a == str(int(a)) and b == str(int(b))  # No leading zeros in the question.
    lengths |= {len(a), len(b)}
  assert lengths == {1, 2, 3}  # Every digit count is drawn, none beyond max_digits.
  assert st.arithmetic_problems(3, seed=0)[0].prompt.startswith("What is ")


def test_small_space_is_filled_without_repeats_and_overflow_is_refused():
  problems = st.arithmetic_problems(100, seed=1, max_digits=1)  # All 10 x 10 one-digit pairs.
  assert {p.prompt for p in problems} == {f"What is {a} + {b}?" for a in range(10) for b in range(10)}
  with pytest.raises(ValueError, match="only 100"):
    st.arithmetic_problems(101, seed=1, max_digits=1)
  with pytest.raises(ValueError, match="max_digits must be"):
    st.arithmetic_problems(5, seed=1, max_digits=0)


def test_task_splits_are_disjoint_and_eval_is_stable():
  train, held_out = st.task_splits(300, 50, seed=7, max_digits=2)
  assert len(train) == 300 and len(held_out) == 50
  assert not {p.prompt for p in train} & {p.prompt for p in held_out}
  _, held_out_again = st.task_splits(20, 50, seed=7, max_digits=2)
  assert held_out_again == held_out
  with pytest.raises(ValueError, match="num_train must be"):
    st.task_splits(-1, 5, seed=0, max_digits=2)


@pytest.mark.parametrize("completion, expected", [
    ("The answer is 432.", "432"),
    ("The answer is -17.", "-17"),
    ("The answer is 12, I think. The answer is 13.", "12"),
    ("Let me add. The answer is   99 because 9 carries", "99"),
    ("The answer is 007.", "7"),
    ("The answer is.", None),
    ("The answer is ten.", None),
    ("the answer is 5.", None),
    ("432", None),
    ("", None),
    ("The answer is - 5.", None),
])
def test_extract_answer(completion, expected):
  assert st.extract_answer(completion) == expected


def test_format_and_extract_round_trip():
  for p in st.arithmetic_problems(50, seed=2, max_digits=4):
    assert st.extract_answer(st.format_answer(p.answer)) == p.answer


@pytest.mark.parametrize("completion, exact, fmt", [
    ("The answer is 432.", 1.0, 1.0),
    ("  The answer is 432.\n", 1.0, 1.0),
    ("The answer is 431.", 0.0, 1.0),
    ("The answer is -432.", 0.0, 1.0),
    ("The answer is 432. Glad to help!", 1.0, 0.0),
    ("The answer is 432", 1.0, 0.0),
    ("I think the answer is 432.", 0.0, 0.0),
    ("432", 0.0, 0.0),
    ("The answer is four hundred.", 0.0, 0.0),
])
def test_reward_functions(completion, exact, fmt):
  problem = st.Problem(prompt="What is 47 + 385?", answer="432")
  assert st.REWARD_FUNCTIONS["exact_match"](problem, completion) == exact
  assert st.REWARD_FUNCTIONS["format"](problem, completion) == fmt
  assert st.total_reward(("exact_match", "format"), problem, completion) == exact + fmt
  assert st.total_reward(("format",), problem, completion) == fmt


def test_check_reward_functions():
  assert st.check_reward_functions("exact_match,format", "rl.rewards") == ("exact_match", "format")
  assert st.check_reward_functions(" format ", "rl.rewards") == ("format",)
  with pytest.raises(ConfigError, match=r"^rl.rewards: unknown reward function 'length'; "
                     r"allowed: exact_match, format"):
    st.check_reward_functions("exact_match,length", "rl.rewards")
  with pytest.raises(ConfigError, match=r"^rl.rewards: no reward functions named"):
    st.check_reward_functions("  ", "rl.rewards")
  with pytest.raises(ConfigError, match=r"^rl.rewards: unknown reward function ''"):
    st.check_reward_functions("format,", "rl.rewards")
  with pytest.raises(ConfigError, match=r"^rl.rewards: .*\['format'\] named more than once"):
    st.check_reward_functions("format,format", "rl.rewards")
  with pytest.raises(ValueError, match="unknown reward function"):
    st.total_reward(("nope",), st.Problem("What is 1 + 1?", "2"), "The answer is 2.")


def test_demonstrations_and_prompts():
  problems = st.arithmetic_problems(4, seed=0)
  demos = st.demonstrations(problems)
  prompts = st.problem_prompts(problems)
  for p, demo, prompt in zip(problems, demos, prompts):
    assert demo == [{"role": "user", "content": p.prompt},
                    {"role": "assistant", "content": f"The answer is {p.answer}."}]
    assert prompt == demo[:1]


def test_preference_pairs_prefer_the_right_answer_over_a_human_mistake():
  problems = st.arithmetic_problems(400, seed=5, max_digits=3)
  pairs = st.preference_pairs(problems, seed=11)
  assert pairs == st.preference_pairs(problems, seed=11)
  assert pairs != st.preference_pairs(problems, seed=12)
  kinds = set()
  for p, pair in zip(problems, pairs):
    assert isinstance(pair, PreferencePair)
    assert pair.prompt == [{"role": "user", "content": p.prompt}]
    assert st.REWARD_FUNCTIONS["exact_match"](p, pair.chosen) == 1.0
    assert st.REWARD_FUNCTIONS["exact_match"](p, pair.rejected) == 0.0
    assert st.REWARD_FUNCTIONS["format"](p, pair.rejected) == 1.0
    wrong, right = st.extract_answer(pair.rejected), p.answer
    assert not wrong.startswith("-") and wrong != right
    a, b = (int(x) for x in _operands(p))
    no_carry = int("".join(str((int(x) + int(y)) % 10) for x, y in zip(
        str(a).zfill(4), str(b).zfill(4))))
    differing = [i for i, (x, y) in enumerate(zip(wrong, right)) if x != y]
    if len(wrong) == len(right) and len(differing) == 1 and abs(
        int(wrong[differing[0]]) - int(right[differing[0]])) == 1:
      kinds.add("off_by_one")
    elif int(wrong) == no_carry:
      kinds.add("dropped_carry")
    elif sorted(wrong) == sorted(right) and len(differing) == 2:
      kinds.add("swapped")
    else:
      pytest.fail(f"{p.prompt} {right}: rejected {wrong} is none of the modelled mistakes")
  assert kinds == {"off_by_one", "dropped_carry", "swapped"}


def test_preference_pairs_reject_a_models_own_wrong_reply():
  problems = st.arithmetic_problems(3, seed=2)
  right = [st.format_answer(p.answer) for p in problems]
  replies = [["The answer is -1.", "garbled"],  # Both wrong: the first is rejected.
             [right[1], " The answer is 1000000."],  # The right one is skipped.
             [right[2], right[2] + " Sure."]]  # All right: a rule-made mistake instead.
  pairs = st.preference_pairs(problems, seed=4, replies=replies)
  assert [pair.rejected for pair in pairs[:2]] == ["The answer is -1.", " The answer is 1000000."]
  assert [pair.chosen for pair in pairs] == right
  # The rule-made mistakes come from the same rng stream as without replies.
  assert pairs[2] == st.preference_pairs(problems, seed=4)[2]
  with pytest.raises(ValueError, match="2 lists of replies for 3 problems"):
    st.preference_pairs(problems, seed=4, replies=replies[:2])


def test_preference_pairs_on_edge_answers():
  # 0 + 0 = 0 has no carry and no swap: only an off-by-one can be wrong; 5 + 5 = 10 keeps no zero lead.
  edge = [st.Problem("What is 0 + 0?", "0"), st.Problem("What is 5 + 5?", "10"),
          st.Problem("What is 50 + 50?", "100"), st.Problem("What is 1 + 0?", "1")]
  for seed in range(20):
    for p, pair in zip(edge, st.preference_pairs(edge, seed=seed)):
      wrong = st.extract_answer(pair.rejected)
      assert wrong != p.answer and st.format_reward(p, pair.rejected) == 1.0
      assert wrong == str(int(wrong))


def test_mirrored_pairs_make_each_wrong_answer_right_for_its_sibling_problem():
  def pair(prompt, rejected):
    a, b = map(int, _PROMPT.fullmatch(prompt).groups())
    return PreferencePair(prompt=[{"role": "user", "content": prompt}],
                          chosen=st.format_answer(str(a + b)), rejected=rejected)
  pairs = [pair("What is 47 + 38?", "The answer is 75. Done."),  # -> 47 + 28 = 75.
           pair("What is 90 + 9?", "The answer is 89."),  # 90 + (-1) is out: -> 80 + 9.
           pair("What is 99 + 98?", "The answer is 199."),  # 99 + 100, 101 + 98: both out.
           pair("What is 3 + 4?", "seven"),  # No answer to mirror.
           pair("What is 12 + 30?", "The answer is 43.")]  # 12 + 31 is held out: -> 13 + 30.
  mirrored = st.mirrored_pairs(pairs, max_digits=2, excluded=frozenset({"What is 12 + 31?"}))
  assert [(m.prompt[0]["content"], m.chosen, m.rejected) for m in mirrored] == [
      ("What is 47 + 28?", "The answer is 75.", "The answer is 85."),
      ("What is 80 + 9?", "The answer is 89.", "The answer is 99."),
      ("What is 13 + 30?", "The answer is 43.", "The answer is 42.")]
  for m in mirrored:  # Right for its own prompt, and each chosen answer was rejected before.
    a, b = map(int, _PROMPT.fullmatch(m.prompt[0]["content"]).groups())
    problem = st.Problem(m.prompt[0]["content"], str(a + b))
    assert st.exact_match_reward(problem, m.chosen) == 1 and not st.exact_match_reward(problem, m.rejected)
