"""Text from a language model: a prompt (or a chat turn) in, its continuation out, by any of the
decoding strategies of gen_jax.sampling, with the weights optionally quantized first. What
`python -m gen_jax.sample` runs for every language model it loads, and what gen_jax.rag answers
with.
"""
import dataclasses
import sys

import jax
import numpy as np

from gen_jax import data as data_lib
from gen_jax.families import llm_sources
from gen_jax.models.transformer import Transformer, TransformerConfig, unstack_layers
from gen_jax.quant.convert import quantize_params, quantized_config


def prompt_ids(tok: data_lib.Tokenizer, prompt: str, *, chat: bool = False, system: str = ""
               ) -> tuple[list[int], tuple[int, ...]]:
  """(prompt ids, extra stop token ids): `prompt` as it is, or with `chat` the user turn (after
  `system`) of the chat template, stopping at its end-of-turn token too."""
  if not chat:
    if system:
      raise ValueError("--system: a system instruction needs --chat")
    return tok.encode(prompt), ()
  from gen_jax.interop import chat_prompt  # Only chat needs jinja2.
  text, end_of_turn = chat_prompt(tok, prompt, system)
  # The template writes any BOS itself; the post-processor must not add a second one.
  ids = tok.encode(text, add_special_tokens=False)
  return ids, () if end_of_turn in (None, tok.eos_id) else (end_of_turn,)


def generate_text(model_config: TransformerConfig, params, tok: data_lib.Tokenizer,
                  request, *, echo: bool = True) -> str:
  """Continues request.prompt (with request.chat, answers it as the chat template's user turn)
  and returns the continuation; with `echo`, prints the prompt and its continuation (in chat,
  the reply alone; with beam search, the request.num_return best with their scores). Raises
  ValueError naming the bad flag."""
  from gen_jax.sampling import SamplingParams, beam_search, generate_batch
  speculative = request.draft_layers or request.draft_workdir
  if request.draft_layers and request.draft_workdir:
    raise ValueError("--draft_workdir: give one draft, --draft_layers or --draft_workdir")
  if speculative and request.beam_width:
    raise ValueError("--draft_layers/--draft_workdir: speculative decoding samples; it does not "
                     "combine with --beam_width")
  prompt, turn_stops = prompt_ids(tok, request.prompt, chat=request.chat,
                                  system=request.system)
  shown_prompt = "" if request.chat else request.prompt
  model_config, params = quantized_for_sampling(model_config, params, tok, request)
  if not request.scan_layers:
    model_config = dataclasses.replace(model_config, scan_layers=False)
    params = unstack_layers(params, model_config.num_layers)
  net = Transformer(model_config)
  sampling = SamplingParams(temperature=request.temperature, top_k=request.top_k,
                            top_p=request.top_p, min_p=request.min_p,
                            repetition_penalty=request.repetition_penalty)
  if any(not s for s in request.stop):
    raise ValueError("--stop: a stop string must not be empty")
  if request.beam_width:
    changed = [f"--{name}" for name, default in (("temperature", 0.0), ("top_k", 0), ("top_p", 1.0),
                                                 ("min_p", 0.0), ("repetition_penalty", 1.0))
               if getattr(request, name) != default] + (["--stop"] if request.stop else [])
    if changed:
      raise ValueError(f"--beam_width: beam search ranks by log-probability and does not use "
                       f"{', '.join(changed)}; drop them or set --beam_width=0 to sample")
    if turn_stops:
      raise ValueError(f"--beam_width: beam search stops only at end-of-text, and this chat "
                       f"template ends a turn with {tok.decode(turn_stops)!r}; sample instead")
    found = beam_search(net, params, [prompt], beam_width=request.beam_width,
                        max_new_tokens=request.max_new_tokens, eos_id=tok.eos_id,
                        max_seq_len=model_config.max_seq_len,
                        length_penalty=request.length_penalty, num_return=request.num_return)[0]
    for rank, hypothesis in enumerate(found if echo else (), 1):
      end = "end-of-text" if hypothesis.ended else "the token budget"
      print(f"--- beam {rank}: score {hypothesis.score:.4f}, log p {hypothesis.log_prob:.4f}, "
            f"{len(hypothesis.tokens)} tokens, stopped at {end}\n"
            f"{shown_prompt}{tok.decode(hypothesis.tokens)}")
    return tok.decode(found[0].tokens)
  if speculative:
    return _speculative_text(net, params, tok, prompt, turn_stops, sampling,
                             shown_prompt if echo else None, request)
  stop_sequences = tuple(tuple(tok.encode(s, add_special_tokens=False)) for s in request.stop)
  out = generate_batch(net, params, [prompt], max_new_tokens=request.max_new_tokens,
                       sampling=sampling, rng=jax.random.key(request.seed), eos_id=tok.eos_id,
                       max_seq_len=model_config.max_seq_len,
                       stop_sequences=stop_sequences + tuple((t,) for t in turn_stops))[0]
  if out and out[-1] in turn_stops:  # generate_batch keeps a stop sequence; end-of-turn is markup.
    out = out[:-1]
  text = tok.decode(out)
  # The tokens stop at a stop string's own encoding; the text is cut wherever the string appears,
  # however the continuation happened to tokenize it.
  cuts = [text.find(s) for s in request.stop if s in text]
  text = text[:min(cuts)] if cuts else text
  if echo:
    print(shown_prompt + text)
  return text


# Calibration for --quant_method=gptq/awq: this many windows of this many tokens (at most the
# model's context) from the start of --calibration_file; benchmarks/quantization.py used 16 x 512.
CALIBRATION_WINDOWS, CALIBRATION_LENGTH = 16, 512


def quantized_for_sampling(model_config: TransformerConfig, params, tok: data_lib.Tokenizer,
                           request) -> tuple[TransformerConfig, dict]:
  """(config, params) in request.weight_bits (unchanged at 0), quantized by request.quant_method;
  ValueError names the bad flag."""
  if not request.weight_bits:
    if request.quant_method != "rtn" or request.calibration_file:
      raise ValueError("--quant_method/--calibration_file: they choose how --weight_bits "
                       "quantizes; set --weight_bits=8 or 4")
    if request.weight_matmul_impl != "xla":
      raise ValueError("--weight_matmul_impl: it chooses how int weights multiply; set "
                       "--weight_bits=8 or 4")
    return model_config, params
  calibration = None
  if request.quant_method != "rtn":
    if not request.calibration_file:
      raise ValueError(f"--calibration_file: --quant_method={request.quant_method} calibrates "
                       "on a text file (keep it apart from text you evaluate on)")
    try:
      with open(request.calibration_file, encoding="utf-8") as f:
        ids = tok.encode(f.read(), add_special_tokens=False)
    except OSError as e:
      raise ValueError(f"--calibration_file: {e}") from e
    length = min(CALIBRATION_LENGTH, model_config.max_seq_len)
    count = min(CALIBRATION_WINDOWS, len(ids) // length)
    if count < 1:
      raise ValueError(f"--calibration_file: {len(ids)} tokens; calibration needs at least one "
                       f"window of {length}")
    calibration = np.asarray(ids[:count * length], np.int32).reshape(count, length)
  try:
    params = quantize_params(params, model_config, bits=request.weight_bits,
                             group_size=request.weight_group_size, method=request.quant_method,
                             calibration=calibration)
  except ValueError as e:
    raise ValueError(f"--weight_bits/--weight_group_size/--quant_method: {e}") from e
  config = quantized_config(model_config, request.weight_bits, request.weight_group_size)
  return dataclasses.replace(config, weight_matmul_impl=request.weight_matmul_impl), params


def _speculative_text(net, params, tok, prompt, turn_stops, sampling, shown_prompt: str | None,
                      request) -> str:
  """generate_text's speculative path: the draft is the model's first request.draft_layers layers
  or the model of request.draft_workdir. Prints shown_prompt and the text unless it is None."""
  from gen_jax.sampling import layer_skip_draft, speculative_generate
  if request.stop or turn_stops:
    raise ValueError("--draft_layers/--draft_workdir: speculative decoding stops only at "
                     "end-of-text; drop --stop (or a chat template whose turns end with another "
                     "token)")
  if request.draft_workdir:
    loaded = llm_sources.load(f"workdir:{request.draft_workdir}", "--draft_workdir")
    if loaded.tokenizer.hf.to_str() != tok.hf.to_str():
      raise ValueError(f"--draft_workdir: {request.draft_workdir!r} tokenizes differently from "
                       "the model; a draft proposes the model's own token ids")
    draft, draft_params = Transformer(loaded.config), loaded.params
  else:
    draft, draft_params = layer_skip_draft(net, params, request.draft_layers)
  found, stats = speculative_generate(
      net, params, draft, draft_params, [prompt], num_draft_tokens=request.draft_tokens,
      max_new_tokens=request.max_new_tokens, sampling=sampling, rng=jax.random.key(request.seed),
      eos_id=tok.eos_id, max_seq_len=net.config.max_seq_len)
  text = tok.decode(found[0])
  if shown_prompt is not None:
    print(shown_prompt + text)
  print(f"speculative decoding: {stats.accepted}/{stats.drafted} draft tokens accepted "
        f"({stats.acceptance_rate:.0%}) in {stats.rounds} rounds", file=sys.stderr)
  return text
