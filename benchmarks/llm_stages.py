"""Later stages on SmolLM2-135M-Instruct, each beside its comparison run in the same process:

  distill: a 4-layer student trained on the teacher's logits (configs/llm/distill.py:smollm2)
           vs the same student on the text's own next tokens (distill.kl_weight=0), same steps;
  lora:    rank-8 adapters on every projection (configs/llm/lora.py:smollm2), the same adapters
           over the base rounded to int4 (QLoRA, model.weight_bits=4), and full fine-tuning of
           the same model from the same weights, same steps.

  python benchmarks/llm_stages.py --distill_steps=50 --lora_steps=15

Prints held-out bits per byte (Python's documentation topics, the configs' held-out split), the
teacher's / base model's on the same windows, seconds per step, trainable parameters and the bytes
one checkpoint takes, and the bytes of the frozen weights the run holds beside them.
"""
import os
import tempfile
import time

from absl import app, flags

from gen_jax.config import load_config_file
from gen_jax.config.presets import set_field

_DISTILL_STEPS = flags.DEFINE_integer("distill_steps", 50, "Steps of each distillation run (0: skip).")
_LORA_STEPS = flags.DEFINE_integer("lora_steps", 15, "Steps of each fine-tuning run (0: skip).")
_FULL_LR = flags.DEFINE_float("full_learning_rate", 1e-4, "Peak learning rate of full fine-tuning.")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(spec: str, steps: int, **overrides):
  config = load_config_file(os.path.join(REPO, spec))
  for field, value in {"train.num_steps": steps, "train.eval_every": steps,
                       "checkpoint.every_steps": steps, "logging.progress_bar": False,
                       "optimizer.warmup_steps": max(1, steps // 10), **overrides}.items():
    set_field(config, field, value)
  return config


def _run(label: str, config, root: str) -> dict:
  from gen_jax.train import train_and_evaluate
  workdir = os.path.join(root, label.replace(" ", "_"))
  start = time.perf_counter()
  metrics = train_and_evaluate(config, workdir)
  wall = time.perf_counter() - start
  step = config.train.num_steps
  state_dir = os.path.join(workdir, "checkpoints", str(step), "state")
  ckpt_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(state_dir) for f in fs)
  return {"label": label, "bpb": metrics["eval/bits_per_byte"],
          "teacher_bpb": metrics.get("eval/teacher_bits_per_byte"),
          "kl": metrics.get("eval/distill_kl"), "sec_per_step": 1 / max(
              metrics["train/tokens_per_sec"], 1e-9) * config.train.batch_size
          * config.model.max_seq_len, "wall": wall, "ckpt_mb": ckpt_bytes / 2 ** 20}


def _sizes(config) -> dict:
  """{"trainable": parameter count, "frozen_mb": MiB of the frozen leaves}."""
  import jax
  from gen_jax import families, parallel
  from gen_jax.train import abstract_train_state
  layout = abstract_train_state(families.get("llm").param_spec(config), config,
                                parallel.make_mesh(config.mesh))
  return {"trainable": sum(x.size for x in jax.tree.leaves(layout.abstract.params)),
          "frozen_mb": sum(x.size * x.dtype.itemsize
                           for x in jax.tree.leaves(layout.abstract_frozen)) / 2 ** 20}


def main(argv):
  del argv
  rows = []
  with tempfile.TemporaryDirectory() as root:
    if _DISTILL_STEPS.value:
      n = _DISTILL_STEPS.value
      for label, weight in (("student, KL to teacher", 1.0), ("student, text only", 0.0)):
        config = _config("configs/llm/distill.py:smollm2", n, **{"distill.kl_weight": weight})
        rows.append({**_run(label, config, root), **_sizes(config), "steps": n})
    if _LORA_STEPS.value:
      n = _LORA_STEPS.value
      for label, overrides in (
          ("LoRA rank 8, all projections", {}),
          ("QLoRA: the same over an int4 base", {"model.weight_bits": 4}),
          ("full fine-tuning", {"model.lora_rank": 0, "optimizer.learning_rate": _FULL_LR.value,
                                "optimizer.weight_decay": 0.0})):
        config = _config("configs/llm/lora.py:smollm2", n, **overrides)
        rows.append({**_run(label, config, root), **_sizes(config), "steps": n})
  print("| run | steps | held-out bits/byte | teacher bits/byte | eval KL | s/step | "
        "trainable params | checkpoint MiB | frozen MiB |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    teacher = f"{r['teacher_bpb']:.4f}" if r["teacher_bpb"] is not None else "-"
    kl = f"{r['kl']:.4f}" if r["kl"] is not None else "-"
    print(f"| {r['label']} | {r['steps']} | {r['bpb']:.4f} | {teacher} | {kl} | "
          f"{r['sec_per_step']:.2f} | {r['trainable']:,} | {r['ckpt_mb']:.1f} | "
          f"{r['frozen_mb']:.1f} |")


if __name__ == "__main__":
  app.run(main)
