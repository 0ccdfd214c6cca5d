"""Writes tests/eval/tasks/arithmetic.jsonl: 24 SYNTHETIC addition problems (gen_jax.data.
synthetic_tasks, seed 7) with four answer choices each (the sum and three near misses), for the
local lm-eval tasks in this folder. Run once, from the repository root:

  python tests/eval/tasks/make_arithmetic.py
"""
import json
import os
import random

from gen_jax.data import synthetic_tasks

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "arithmetic.jsonl")


def main():
  rng = random.Random(7)
  with open(OUT, "w") as f:
    for problem in synthetic_tasks.arithmetic_problems(24, seed=7, max_digits=2):
      right = int(problem.answer)
      wrong = rng.sample([v for v in range(max(0, right - 11), right + 12) if v != right], 3)
      choices = [str(v) for v in wrong + [right]]
      rng.shuffle(choices)
      f.write(json.dumps({"question": problem.prompt, "choices": choices,
                          "answer": choices.index(str(right)), "target": problem.answer}) + "\n")
  print(f"wrote {OUT}")


if __name__ == "__main__":
  main()
