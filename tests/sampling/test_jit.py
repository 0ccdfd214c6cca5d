"""The decoding loops compile with `sampling.jit.COMPILER_OPTIONS` of the platform they are traced
for: the options reach XLA, the GPU's are options XLA knows, and they change no token."""
import dataclasses

import jax
import pytest

from gen_jax.models import Transformer
from gen_jax.parallel.context import compiling_for
from gen_jax.sampling import SamplingParams, beam_search, generate_batch
from gen_jax.sampling import jit as sampling_jit
from tests.sampling.test_lm import CFG, _model

PROMPTS = [[3, 7, 11], [5], [2, 9, 4, 4, 8, 1]]


def _greedy(model, params):
  return generate_batch(model, params, PROMPTS, max_new_tokens=6,
                        sampling=SamplingParams(temperature=0.0), rng=jax.random.key(0),
                        eos_id=-1, max_seq_len=CFG.max_seq_len)


@pytest.mark.parametrize("platform", ["cpu", "gpu"])
def test_the_options_of_the_platform_traced_for_reach_the_compiler(monkeypatch, platform):
  model, params = _model()
  model = Transformer(dataclasses.replace(CFG, attention_impl="xla"))  # Traceable for any target.
  monkeypatch.setitem(sampling_jit.COMPILER_OPTIONS, platform, {"xla_no_such_option": True})
  with compiling_for(platform), pytest.raises(Exception, match="xla_no_such_option"):
    _greedy(model, params)
  monkeypatch.setitem(sampling_jit.COMPILER_OPTIONS, platform, {})
  with compiling_for(platform):
    assert len(_greedy(model, params)) == len(PROMPTS)


def test_the_gpu_options_are_xla_options_and_change_no_token(monkeypatch):
  # CI has no GPU, but XLA's debug options are one set for every backend: compiling here with
  # the GPU's options checks their names and values, and that decoding is unchanged.
  model, params = _model()
  plain = _greedy(model, params)
  plain_beams = beam_search(model, params, PROMPTS[:1], beam_width=2, max_new_tokens=4, eos_id=-1,
                            max_seq_len=CFG.max_seq_len)
  monkeypatch.setitem(sampling_jit.COMPILER_OPTIONS, "cpu", sampling_jit.COMPILER_OPTIONS["gpu"])
  assert _greedy(model, params) == plain
  beams = beam_search(model, params, PROMPTS[:1], beam_width=2, max_new_tokens=4, eos_id=-1,
                      max_seq_len=CFG.max_seq_len)
  assert [h.tokens for h in beams[0]] == [h.tokens for h in plain_beams[0]]
