"""Direct Preference Optimization (Rafailov et al., 2023): the SFT model learns from preference
pairs directly, held near its starting point (the frozen reference) by dpo.beta.

  python -m gen_jax.main --config=configs/llm/dpo.py:tiny \
      --config.init.source=workdir:/tmp/sft --workdir=/tmp/dpo
  python -m gen_jax.sample --workdir=/tmp/dpo --chat --prompt="What is 12 + 35?"

The reference is init.source's model (the SFT stage), frozen and never checkpointed;
dpo.loss_type='ipo' gives IPO (Azar et al., 2023). Data as configs/llm/reward.py: the synthetic
arithmetic task's pairs or a local .jsonl of {"prompt", "chosen", "rejected"} lines. Metrics:
the implicit rewards of both responses (chosen_reward, rejected_reward), reward_margin and
reward_accuracy, on training and held-out pairs.

Presets: tiny (tests and CPU: the tiny model's shape; a random policy and reference unless
init.source names a workdir).
"""
from gen_jax.config import apply_preset
from gen_jax.config import llm

PRESETS = {"tiny": llm.TINY_PAIRS}


def get_config(arg=None):
  return apply_preset(llm.preference_base("dpo"), arg, PRESETS, default="tiny")
