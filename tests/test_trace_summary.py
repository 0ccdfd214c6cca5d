"""benchmarks/trace_summary.py reads a JAX profiler trace: per timeline, the events, the time they
kept it busy (overlaps counted once) and the event names that took the most of it."""
import gzip
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import pytest

_PATH = pathlib.Path(__file__).parent.parent / "benchmarks" / "trace_summary.py"
_SPEC = importlib.util.spec_from_file_location("trace_summary", _PATH)
trace_summary = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(trace_summary)


def _write(path, events):
  with gzip.open(path, "wt") as f:
    json.dump({"traceEvents": events}, f)


def _metadata(pid, process, tid, thread):
  return [{"ph": "M", "pid": pid, "name": "process_name", "args": {"name": process}},
          {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": thread}}]


def test_busy_time_is_the_union_of_the_events_and_names_group_across_numbers(tmp_path):
  stream = [  # A GPU stream: two numbered fusions of one kind, then a gemm; a 60 us gap.
      {"ph": "X", "pid": 1, "tid": 7, "name": "loop_add_fusion_3", "ts": 100, "dur": 10},
      {"ph": "X", "pid": 1, "tid": 7, "name": "loop_add_fusion_12", "ts": 110, "dur": 10},
      {"ph": "X", "pid": 1, "tid": 7, "name": "gemm", "ts": 180, "dur": 20}]
  host = [  # A host thread whose events nest: the outer one's 100 us are its busy time.
      {"ph": "X", "pid": 2, "tid": 3, "name": "Execute", "ts": 90, "dur": 100},
      {"ph": "X", "pid": 2, "tid": 3, "name": "launch", "ts": 95, "dur": 5},
      {"ph": "X", "pid": 2, "tid": 3, "name": "launch", "ts": 150, "dur": 5}]
  path = tmp_path / "perfetto_trace.json.gz"
  _write(path, _metadata(1, "/device:GPU:0", 7, "Stream #14(Compute)") +
         _metadata(2, "/host:CPU", 3, "python") + stream + host)

  gpu, cpu = trace_summary.timelines(trace_summary.load_events(str(path)))
  assert (gpu.process, gpu.thread, gpu.events) == ("/device:GPU:0", "Stream #14(Compute)", 3)
  assert (gpu.busy_us, gpu.span_us) == (40.0, 100.0)  # Busy 40 of the 100 us from 100 to 200.
  assert dict(gpu.by_name) == {"loop_add_fusion": [2, 20.0], "gemm": [1, 20.0]}
  assert (cpu.busy_us, cpu.span_us) == (100.0, 100.0)
  assert dict(cpu.by_name)["launch"] == [2, 10.0]

  summary = trace_summary.summarize(str(tmp_path), per=2, per_name="token", processes="/device")
  assert "/host:CPU" not in summary
  row = next(line for line in summary.splitlines() if line.startswith("| /device:GPU:0"))
  assert row.split(" | ")[2:5] == ["1.5", "20.0", "40%"]  # Per token: events, busy us; busy/span.
  assert "| loop_add_fusion | 1.0 | 10.0 | 10.0 | 50% |" in summary


def test_a_directory_without_a_trace_says_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="create_perfetto_trace"):
    trace_summary.find_trace(str(tmp_path))


def test_a_real_profile_of_a_jitted_function_is_summarized(tmp_path):
  f = jax.jit(lambda x: jnp.tanh(x @ x).sum())
  x = jnp.ones((128, 128))
  f(x).block_until_ready()
  with trace_summary.traced(str(tmp_path)):
    for _ in range(3):
      f(x).block_until_ready()
  lines = trace_summary.timelines(trace_summary.load_events(trace_summary.find_trace(
      str(tmp_path))))
  assert lines and all(t.busy_us <= t.span_us + 1e-6 for t in lines)
  assert any(t.process.startswith("/host:CPU") and t.events > 0 for t in lines)
