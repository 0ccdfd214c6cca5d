"""A reward model (Ouyang et al., 2022): the SFT model's body with a scalar head, trained with the
Bradley-Terry loss to score the chosen response of each pair above the rejected one.

  python -m gen_jax.main --config=configs/llm/reward.py:tiny \
      --config.init.source=workdir:/tmp/sft --workdir=/tmp/rm

Data: the synthetic arithmetic task's pairs (the right answer chosen, a plausible wrong one
rejected; synthetic, since no human preference data is available offline) or a local .jsonl of
{"prompt", "chosen", "rejected"} lines (data.source). Held-out pairwise accuracy is eval/accuracy.
The run takes init.source's tokenizer and chat template and must have its model.* shape.
reward.center_weight > 0 also pulls each pair's summed score toward 0 (Eisenstein et al., 2023), so
the scores a PPO policy trains on do not carry an offset per prompt.

Presets: tiny (tests and CPU: the tiny model's shape; a random body unless init.source names a
workdir).
"""
from gen_jax.config import apply_preset
from gen_jax.config import llm

PRESETS = {"tiny": llm.TINY_PAIRS}


def get_config(arg=None):
  return apply_preset(llm.preference_base("reward"), arg, PRESETS, default="tiny")
