"""Where the time of a profiled run went: a JAX profiler trace summarized, timeline by timeline.

  python benchmarks/trace_summary.py /tmp/trace [--per=32 --per_name=token] [--processes=/device]

Reads the trace JSON that `jax.profiler.trace(dir, create_perfetto_trace=True)` writes
(`perfetto_trace.json.gz` under dir; any `*.trace.json.gz` or `*.json[.gz]` path also works) and,
for every timeline (a process's thread: on a GPU, a CUDA stream of kernels; on the host, a
thread of launches and waits), prints how many events it ran, the time they kept it busy (the
union of their intervals: nested events count once), that time over the timeline's span, and
the events that took the most time. Divided by --per (e.g. the tokens a decoding run made), the
counts and times are per unit: kernels per token, busy microseconds per token.

What it answers: a GPU stream busy for a small part of its span is waiting on the host (kernel
launches, synchronizations: the fix is fewer or bigger kernels, or graphs); a stream that is busy
throughout spends its time in the kernels listed, and a copy or concatenation among the top ones
is memory traffic the computation did not need. benchmarks/decode.py --trace_dir and
benchmarks/lm_train.py --trace_dir write traces for it; benchmarks/device_checks.sh brings their
summaries back from the lent GPU.
"""
import collections
import contextlib
import dataclasses
import glob
import gzip
import json
import os
import re

from absl import app, flags

_NUMBERED = re.compile(r"([._]\d+)+$")  # fusion.12, loop_add_fusion_3: one kind of kernel.


@dataclasses.dataclass
class Timeline:
  process: str
  thread: str
  events: int = 0
  busy_us: float = 0.0  # The union of the events' intervals.
  start_us: float = float("inf")
  end_us: float = float("-inf")
  by_name: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(
      lambda: [0, 0.0]))  # name: [count, total us], nested events counted in full.

  @property
  def span_us(self) -> float:
    return max(self.end_us - self.start_us, 0.0)


def find_trace(path: str) -> str:
  """The trace file itself, or the newest perfetto / trace-viewer JSON under a directory."""
  if os.path.isfile(path):
    return path
  found = [f for pattern in ("perfetto_trace.json.gz", "*.trace.json.gz")
           for f in glob.glob(os.path.join(path, "**", pattern), recursive=True)]
  if not found:
    raise FileNotFoundError(f"no perfetto_trace.json.gz or *.trace.json.gz under {path}: was it "
                            "written by jax.profiler.trace(..., create_perfetto_trace=True)?")
  return max(found, key=os.path.getmtime)


def load_events(path: str) -> list[dict]:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt") as f:
    data = json.load(f)
  return data["traceEvents"] if isinstance(data, dict) else data


def timelines(events: list[dict], processes: str = "") -> list[Timeline]:
  """Complete ('X') events grouped by (process, thread), in the order the trace names them."""
  process_names, thread_names = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      process_names[e["pid"]] = e["args"]["name"]
    elif e.get("ph") == "M" and e.get("name") == "thread_name":
      thread_names[e["pid"], e.get("tid")] = e["args"]["name"]
  spans = collections.defaultdict(list)
  for e in events:
    if e.get("ph") == "X" and "dur" in e:
      spans[e["pid"], e.get("tid")].append(e)
  result = []
  for (pid, tid), group in spans.items():
    process = process_names.get(pid, str(pid))
    if not process.startswith(processes):
      continue
    line = Timeline(process, thread_names.get((pid, tid), str(tid)), events=len(group))
    covered_until = float("-inf")
    for e in sorted(group, key=lambda e: float(e["ts"])):
      start, duration = float(e["ts"]), float(e["dur"])
      line.start_us, line.end_us = min(line.start_us, start), max(line.end_us, start + duration)
      line.busy_us += max(start + duration - max(start, covered_until), 0.0)
      covered_until = max(covered_until, start + duration)
      name = _NUMBERED.sub("", e["name"])
      line.by_name[name][0] += 1
      line.by_name[name][1] += duration
    result.append(line)
  return sorted(result, key=lambda t: (t.process, -t.busy_us))


def summarize(path: str, per: int = 1, per_name: str = "run", top: int = 10,
              processes: str = "") -> str:
  """Markdown: one row per timeline, then each busy timeline's top events (see the module doc)."""
  trace = find_trace(path)
  lines = timelines(load_events(trace), processes)
  unit = f"per {per_name}" if per > 1 else "in all"
  out = [f"trace {trace}: {len(lines)} timelines" + (f", figures per {per_name} (/{per})"
                                                      if per > 1 else ""),
         f"| process | thread | events {unit} | busy us {unit} | busy / span | span ms |",
         "| --- | --- | ---: | ---: | ---: | ---: |"]
  for t in lines:
    out.append(f"| {t.process} | {t.thread} | {t.events / per:.1f} | {t.busy_us / per:.1f} | "
               f"{t.busy_us / t.span_us if t.span_us else 0:.0%} | {t.span_us / 1e3:.2f} |")
  busiest = max((t.busy_us for t in lines), default=0.0)
  for t in lines:
    if t.busy_us < 0.01 * busiest:  # Idle threads: a line each in the table is enough.
      continue
    out += ["", f"{t.process} / {t.thread}: top {top} of {len(t.by_name)} event names by time",
            f"| event | count {unit} | us {unit} | mean us | share of busy |",
            "| --- | ---: | ---: | ---: | ---: |"]
    for name, (count, total) in sorted(t.by_name.items(), key=lambda kv: -kv[1][1])[:top]:
      out.append(f"| {name[:90]} | {count / per:.1f} | {total / per:.1f} | {total / count:.1f} | "
                 f"{total / t.busy_us:.0%} |")
  return "\n".join(out)


@contextlib.contextmanager
def traced(directory: str):
  """Profiles the block into `directory` (a trace for `summarize`); the caller waits for its
  arrays inside the block, or the trace misses the device's work."""
  import jax  # Only the tracing needs JAX; summarizing a copied trace does not.
  options = jax.profiler.ProfileOptions()
  options.python_tracer_level = 0  # Python frames: the profiler's own calls, and overhead.
  with jax.profiler.trace(directory, create_perfetto_trace=True, profiler_options=options):
    yield


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("one argument: a trace file or the directory jax.profiler.trace wrote")
  print(summarize(argv[1], _PER.value, _PER_NAME.value, _TOP.value, _PROCESSES.value))


if __name__ == "__main__":  # Flags only here: decode.py and lm_train.py import this module.
  _PER = flags.DEFINE_integer("per", 1, "Divide counts and times by this (e.g. tokens decoded).")
  _PER_NAME = flags.DEFINE_string("per_name", "run", "What one unit of --per is, for headers.")
  _TOP = flags.DEFINE_integer("top", 10, "Events listed per timeline, by total time.")
  _PROCESSES = flags.DEFINE_string("processes", "", "Only processes whose name starts with this.")
  app.run(main)
