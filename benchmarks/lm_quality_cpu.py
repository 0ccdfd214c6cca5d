"""LM quality on CPU: gen_jax's `small` language model against the same model in plain PyTorch.

  /work/venv/bin/python benchmarks/lm_quality_cpu.py --budget_sec=150

Both train for the same wall-clock budget on five of Jane Austen's six novels and are scored on the
sixth (default: Persuasion), never seen in training, in bits per byte: summed nats over the counted
held-out targets / ln 2 / the UTF-8 bytes those targets stand for, which does not depend on the
tokenizer. The gen_jax row runs the library's own pieces (llm.build_task, abstract_train_state,
make_train_step, make_eval_step, loop.evaluate). The PyTorch row (where torch is importable) is the
same LLaMA-style decoder written the nanoGPT way in benchmarks/torch_llama.py, started from the very
same initial weights, fed the same packed windows in the same order, with the same AdamW,
warmup+cosine schedule and clipping, and the same target mask (attention and loss stay inside a
document), on as many threads as XLA uses (every core).

Each side times a few steps first (outside the budget) to estimate how many steps fit, and decays
its learning rate over that many steps; a run that outlasts its estimate stays at the final rate.
Compilation (XLA) and the first step (PyTorch) are outside the budget and reported beside it.
The last lines are a markdown table for docs/BENCHMARKS.md.
"""
import dataclasses
import datetime
import glob
import math
import os
import platform
import sys
import tempfile
import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags, logging

from gen_jax import data as data_lib
from gen_jax import objectives, parallel
from gen_jax.config import load_config_file
from gen_jax.families import llm
from gen_jax.train import abstract_train_state, evaluate, make_eval_step, make_train_step
from gen_jax.train.state import learning_rate_schedule, rng_for

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs", "llm", "pretrain.py") + ":small"

_DATA_DIR = flags.DEFINE_string(
    "data_dir", os.path.join(REPO_ROOT, "..", "shared", "data", "austen"),
    "Folder of the novels (*.txt; anything else there is ignored).")
_HELD_OUT = flags.DEFINE_string("held_out", "persuasion.txt", "The novel held out for evaluation.")
_BUDGET = flags.DEFINE_float("budget_sec", 180.0, "Training wall-clock budget per model, seconds.")
_EVAL_WINDOWS = flags.DEFINE_integer(
    "eval_windows", 0, "Held-out windows scored (rounded up to whole batches); 0: the whole novel.")
_CALIBRATION = flags.DEFINE_integer(
    "calibration_steps", 10, "Steps timed before training to estimate the schedule length.")
_SCHEDULE_STEPS = flags.DEFINE_integer(
    "schedule_steps", 0, "Steps the learning rate decays over; 0: each side's own estimate.")
_TORCH = flags.DEFINE_bool("torch", True, "Train the PyTorch comparison row if torch imports.")
_TORCH_COMPILE = flags.DEFINE_bool("torch_compile", False,
                                   "torch.compile the PyTorch model (nanoGPT's default; the first "
                                   "step then takes a minute or more); default eager.")


@dataclasses.dataclass
class Result:
  name: str
  params: int
  steps: int = 0
  schedule_steps: int = 0
  train_sec: float = 0.0
  tokens_per_sec: float = 0.0
  setup_sec: float = 0.0  # Compilation or first step, outside the budget.
  setup_what: str = ""
  final_train_loss: float = float("nan")  # Mean over the last 10 steps, nats/token.
  eval_loss: float = float("nan")  # Nats per counted held-out token.
  bits_per_byte: float = float("nan")
  eval_sec: float = 0.0
  losses: list[float] = dataclasses.field(default_factory=list)  # Training loss of every step.
  others_cpu: float = 0.0  # Share of the machine's cores other processes used while training.


# ---------------------------------------------------------------- data and config


def split_novels(data_dir: str, held_out: str, link_dir: str) -> tuple[str, str, list[str]]:
  """Links every novel but `held_out` into link_dir; returns (train dir, held-out path, names)."""
  novels = sorted(os.path.basename(p) for p in glob.glob(os.path.join(data_dir, "*.txt")))
  if held_out not in novels:
    raise SystemExit(f"--held_out={held_out!r} is not among the novels in {data_dir}: {novels}")
  train_dir = os.path.join(link_dir, "train")
  os.makedirs(train_dir)
  train = [n for n in novels if n != held_out]
  for name in train:
    os.symlink(os.path.abspath(os.path.join(data_dir, name)), os.path.join(train_dir, name))
  return train_dir, os.path.join(data_dir, held_out), train


def make_config(train_dir: str, held_out_path: str, eval_windows: int):
  config = load_config_file(CONFIG)
  config.data.source = train_dir
  config.data.eval_source = held_out_path
  eval_batch = config.train.batch_size // config.train.grad_accum_steps
  config.train.eval_max_batches = -1 if eval_windows <= 0 else -(-eval_windows // eval_batch)
  return config


def held_out_targets(task, byte_lengths: np.ndarray) -> tuple[int, int, int]:
  """(windows, counted target tokens, their UTF-8 bytes) over the evaluated held-out windows."""
  windows = tokens = num_bytes = 0
  for batch in task.eval_data():
    _, targets, weights = map(np.asarray, objectives.packed_targets(batch["tokens"],
                                                                     batch["segment_ids"]))
    windows += int(batch["example_weight"].sum())
    tokens += int(weights.sum())
    num_bytes += int((byte_lengths[targets] * weights).sum())
  return windows, tokens, num_bytes


def estimate_schedule(calibration_sec: float, calibration_steps: int, budget: float,
                      warmup: int) -> int:
  """Steps for the learning rate to decay over: --schedule_steps, or the steps the budget fits."""
  if _SCHEDULE_STEPS.value > 0:
    return _SCHEDULE_STEPS.value
  return max(warmup + 1, int(budget * calibration_steps / calibration_sec))


class OtherLoad:
  """Measures the share of the machine's CPU time that other processes used over a `with` span."""

  def __enter__(self):
    self._start = self._sample()
    return self

  def __exit__(self, *exc):
    (busy0, own0, wall0), (busy1, own1, wall1) = self._start, self._sample()
    self.share = max(0.0, (busy1 - busy0) - (own1 - own0)) / ((wall1 - wall0) * os.cpu_count())

  @staticmethod
  def _sample() -> tuple[float, float, float]:
    """(seconds every core was busy since boot, this process's CPU seconds, wall clock)."""
    with open("/proc/stat") as f:
      ticks = [int(x) for x in f.readline().split()[1:]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # All but idle and iowait.
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.perf_counter()


# ---------------------------------------------------------------- gen_jax


class JaxRun:
  """The library's task, mesh, state and steps for one config."""

  def __init__(self, config, workdir: str):
    self.config = config
    self.task = llm.build_task(config, workdir)
    self.mesh = parallel.make_mesh(config.mesh)
    self.rules = parallel.rules_tuple(config.logical_axis_rules)
    self.rng = rng_for(config.seed, "train")
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      self.eval_step = jax.jit(make_eval_step(self.task.loss_fn))

  def init_state(self):
    """A fresh state and its compiled train step; the schedule runs over config.train.num_steps."""
    layout = abstract_train_state(self.task.params, self.config, self.mesh)
    step = make_train_step(self.task.loss_fn, layout.tx, learning_rate_schedule(self.config),
                           self.config.train.grad_accum_steps)
    example = self.shard(next(iter(self.task.train_data)))
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      state, self.frozen = layout.create(rng_for(self.config.seed, "init"))
      shardings = jax.tree.map(lambda x: x.sharding, layout.abstract)
      start = time.perf_counter()
      compiled = jax.jit(step, donate_argnums=0, out_shardings=(shardings, None)).lower(
          layout.abstract, layout.abstract_frozen, example, self.rng).compile()
      compile_sec = time.perf_counter() - start
    num_params = sum(x.size for x in jax.tree.leaves(layout.abstract.params))
    return state, compiled, compile_sec, num_params

  def shard(self, batch):
    return parallel.shard_batch(batch, self.mesh)

  def train(self, state, step_fn, batches, *, budget_sec=math.inf, max_steps=None, label=""):
    """Steps until budget_sec or max_steps runs out, one step in flight.

    Returns:
      (state, the loss of every step, seconds).
    """
    losses, in_flight = [], None
    next_report = budget_sec / 5
    start = time.perf_counter()
    while max_steps is None or len(losses) < max_steps:
      state, metrics = step_fn(state, self.frozen, self.shard(next(batches)), self.rng)
      losses.append(metrics["loss"])
      if in_flight is not None:
        in_flight.block_until_ready()  # Dispatch of this step overlaps the previous one.
      in_flight = metrics["loss"]
      elapsed = time.perf_counter() - start
      if elapsed >= next_report and label and len(losses) > 1:
        print(f"  {label} {elapsed:6.1f}s step {len(losses) - 1}: loss {float(losses[-2]):.3f}",
              flush=True)
        next_report += budget_sec / 5
      if elapsed >= budget_sec:
        break
    in_flight.block_until_ready()
    return state, [float(x) for x in jax.device_get(losses)], time.perf_counter() - start

  def loss_sum(self, params, batch) -> float:
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return float(self.eval_step(params, self.shard(batch), self.rng)["loss_sum"])

  def evaluate(self, params) -> dict[str, float]:
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return evaluate(self.task, self.eval_step, params, self.mesh,
                      rng_for(self.config.seed, "eval"))


def run_gen_jax(config, workdir: str, budget: float):
  """Trains the library's model for `budget` seconds; returns (Result, run, initial params)."""
  run = JaxRun(config, workdir)
  tokens_per_step = config.train.batch_size * config.model.max_seq_len
  # Calibrate on a throwaway state with the preset's schedule; only the step time matters.
  state, step_fn, _, num_params = run.init_state()
  batches = iter(run.task.train_data)
  state, _, _ = run.train(state, step_fn, batches, max_steps=1)
  _, _, calib_sec = run.train(state, step_fn, batches, max_steps=_CALIBRATION.value)
  config.train.num_steps = estimate_schedule(calib_sec, _CALIBRATION.value, budget,
                                             config.optimizer.warmup_steps)
  print(f"gen_jax: {_CALIBRATION.value / calib_sec:.2f} steps/s while calibrating; learning "
        f"rate over {config.train.num_steps} steps", flush=True)

  state, step_fn, compile_sec, _ = run.init_state()
  init_params = jax.tree.map(lambda x: np.array(x, copy=True), state.params)  # Before donation.
  with OtherLoad() as others:
    state, losses, train_sec = run.train(state, step_fn, iter(run.task.train_data),
                                         budget_sec=budget, label="gen_jax")
  if not all(map(math.isfinite, losses)):
    raise FloatingPointError(f"gen_jax: non-finite training loss {losses[-10:]}")
  start = time.perf_counter()
  metrics = run.evaluate(state.params)
  result = Result(
      name="gen_jax (JAX/XLA)", params=num_params, steps=len(losses),
      schedule_steps=config.train.num_steps, train_sec=train_sec,
      tokens_per_sec=len(losses) * tokens_per_step / train_sec, setup_sec=compile_sec,
      setup_what="XLA compile", final_train_loss=float(np.mean(losses[-10:])),
      eval_loss=metrics["eval/loss"], bits_per_byte=metrics["eval/bits_per_byte"],
      eval_sec=time.perf_counter() - start, losses=losses, others_cpu=others.share)
  return result, run, init_params


# ---------------------------------------------------------------- PyTorch


def torch_reason_absent() -> str | None:
  try:
    import torch  # noqa: F401
  except ImportError as e:
    return (f"torch is not importable ({e}); install it with "
            "`/work/venv/bin/pip install torch==2.13.0`")
  return None


def check_same_model(model, run: JaxRun, init_params) -> float:
  """Relative difference of the two models' summed loss on one batch at the shared init."""
  import torch
  import torch_llama
  batch = next(iter(run.task.eval_data()))
  with torch.no_grad():
    torch_sum = float(torch_llama.loss_sum(model, batch)[0])
  jax_sum = run.loss_sum(init_params, batch)
  return abs(jax_sum - torch_sum) / abs(jax_sum)


def run_torch(config, run: JaxRun, init_params, byte_lengths, budget: float, threads: int):
  """Trains torch_llama's copy of the model from the same init, data and order for `budget` s."""
  import torch
  import torch_llama  # Beside this file; imports torch, so only loaded where torch is.
  torch.set_num_threads(threads)
  model = torch_llama.Decoder(config.model)
  torch_llama.load_flax_params(model, init_params)
  mismatch = check_same_model(model, run, init_params)
  print(f"torch: loss at the shared init differs from gen_jax's by {mismatch:.1e} (relative)")
  if mismatch > 1e-4:
    raise AssertionError("the PyTorch model is not the gen_jax model; the comparison would be void")
  for step in (0, 15, 30, 100, 10**4):  # The hand-written schedule is the library's.
    ours = float(learning_rate_schedule(config)(step))
    theirs = torch_llama.learning_rate(step, config.optimizer, config.train.num_steps)
    assert math.isclose(theirs, ours, rel_tol=1e-5, abs_tol=1e-9), (step, theirs, ours)

  # Calibrate on the model itself (a compiled graph is then reused), then restore the shared init.
  trained = torch.compile(model) if _TORCH_COMPILE.value else model
  batches = iter(run.task.train_data)
  start = time.perf_counter()
  torch_llama.train(trained, config, batches, 1, max_steps=1)
  first_step_sec = time.perf_counter() - start
  _, calib_sec = torch_llama.train(trained, config, batches, 1, max_steps=_CALIBRATION.value)
  num_steps = estimate_schedule(calib_sec, _CALIBRATION.value, budget,
                                config.optimizer.warmup_steps)
  print(f"torch: {_CALIBRATION.value / calib_sec:.2f} steps/s while calibrating; learning rate "
        f"over {num_steps} steps", flush=True)
  torch_llama.load_flax_params(model, init_params)

  with OtherLoad() as others:
    losses, train_sec = torch_llama.train(trained, config, iter(run.task.train_data), num_steps,
                                          budget_sec=budget, label="torch")
  if not all(map(math.isfinite, losses)):
    raise FloatingPointError(f"torch: non-finite training loss {losses[-10:]}")
  start = time.perf_counter()
  metrics = torch_llama.evaluate(trained, run.task.eval_data(), byte_lengths)
  tokens_per_step = config.train.batch_size * config.model.max_seq_len
  mode = "compiled" if _TORCH_COMPILE.value else "eager"
  return Result(
      name=f"PyTorch {torch.__version__} {mode}, same model", steps=len(losses),
      params=sum(p.numel() for p in model.parameters()), schedule_steps=num_steps,
      train_sec=train_sec, tokens_per_sec=len(losses) * tokens_per_step / train_sec,
      setup_sec=first_step_sec,
      setup_what="torch.compile + first step" if _TORCH_COMPILE.value else "first step",
      final_train_loss=float(np.mean(losses[-10:])), eval_loss=metrics["eval/loss"],
      bits_per_byte=metrics["eval/bits_per_byte"], eval_sec=time.perf_counter() - start,
      losses=losses, others_cpu=others.share)


# ---------------------------------------------------------------- report


def cpu_model() -> str:
  with open("/proc/cpuinfo") as f:
    for line in f:
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  return platform.processor() or "unknown"


def print_report(results: list[Result], skipped: str | None, *, budget: float, threads: int,
                 train_names: list[str], held_out: str, eval_counts: tuple[int, int, int]) -> None:
  print("\nDetails (outside the budget: setup, calibration, evaluation):")
  for r in results:
    print(f"  {r.name}: {r.steps} steps in {r.train_sec:.1f}s (learning rate decays over "
          f"{r.schedule_steps}), {r.setup_what} {r.setup_sec:.1f}s, final train loss "
          f"{r.final_train_loss:.3f} nats/token, held-out {r.eval_loss:.3f} nats/token, "
          f"eval {r.eval_sec:.1f}s; other processes used {r.others_cpu:.0%} of the machine's "
          "CPU time while it trained")
  if len(results) == 2:
    n = min(10, *(len(r.losses) for r in results))
    gap = max(abs(a - b) for a, b in zip(results[0].losses[:n], results[1].losses[:n]))
    print(f"  same batches, same init: the first {n} training losses differ by at most {gap:.1e}")
  windows, tokens, num_bytes = eval_counts
  print(f"  held out: {held_out}, {windows} windows, {tokens} counted targets, {num_bytes} bytes; "
        f"trained on: {', '.join(train_names)}")

  versions = f"jax {jax.__version__}"
  if not skipped:
    import torch
    versions += f", torch {torch.__version__}"
  print(f"\nDate: {datetime.date.today().isoformat()}")
  print(f"Machine: nproc {threads} (the threads JAX and torch use), {cpu_model()}; {versions}, "
        f"Python {platform.python_version()}")
  print(f"Command: python benchmarks/lm_quality_cpu.py {' '.join(sys.argv[1:])}".rstrip())
  print("\n| model | params | steps | train tokens/s | held-out bits/byte | budget |")
  print("| --- | ---: | ---: | ---: | ---: | ---: |")
  for r in results:
    print(f"| {r.name} | {r.params / 1e6:.2f}M | {r.steps} | {r.tokens_per_sec:,.0f} | "
          f"{r.bits_per_byte:.3f} | {budget:g} s |")
  if len(results) == 2:
    ours, theirs = results
    print(f"| ours / torch | | | {ours.tokens_per_sec / theirs.tokens_per_sec:.2f}x | "
          f"{ours.bits_per_byte - theirs.bits_per_byte:+.3f} (ours - torch) | |")
  if skipped:
    print(f"\nThe PyTorch comparison row was skipped: {skipped}.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  budget = _BUDGET.value
  threads = len(os.sched_getaffinity(0))  # XLA's CPU thread pool uses every core it may run on.
  skipped = "--notorch was given" if not _TORCH.value else torch_reason_absent()
  with tempfile.TemporaryDirectory(prefix="lm_quality_cpu_") as workdir:
    train_dir, held_out_path, train_names = split_novels(
        os.path.normpath(_DATA_DIR.value), _HELD_OUT.value, workdir)
    config = make_config(train_dir, held_out_path, _EVAL_WINDOWS.value)
    start = time.perf_counter()
    ours, run, init_params = run_gen_jax(config, workdir, budget)
    print(f"gen_jax: done in {time.perf_counter() - start:.0f}s, held-out "
          f"{ours.bits_per_byte:.3f} bits/byte", flush=True)
    byte_lengths = llm.token_byte_lengths(data_lib.Tokenizer.load(workdir),
                                          config.model.vocab_size)
    results = [ours]
    if not skipped:
      results.append(run_torch(config, run, init_params, byte_lengths, budget, threads))
    print_report(results, skipped, budget=budget, threads=threads, train_names=train_names,
                 held_out=_HELD_OUT.value, eval_counts=held_out_targets(run.task, byte_lengths))


if __name__ == "__main__":
  app.run(main)
