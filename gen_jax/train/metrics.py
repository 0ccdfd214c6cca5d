"""Metric sinks: metrics.jsonl, TensorBoard event files, and the console progress bar."""
import json
import math
import os

from tqdm import auto as tqdm_auto

METRICS_FILE = "metrics.jsonl"


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch.

  tensorboardX imports torch whenever it is installed, only to accept torch tensors; gen_jax logs
  Python floats, and torch's import adds about 2 s to every run. Marking torch absent for the
  duration of the import (unless something already imported it) keeps tensorboardX on numpy.
  """
  import sys
  blocked = "torch" not in sys.modules
  if blocked:
    sys.modules["torch"] = None  # `import torch` now raises ImportError, which tensorboardX catches.
  try:
    from tensorboardX import SummaryWriter
  finally:
    if blocked:
      del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:
  """Writes one JSON object per logged step to workdir/metrics.jsonl and to TensorBoard.

  Names are `<split>/<metric>` (train/loss, eval/loss, train/tokens_per_sec). Only process 0 writes.
  """

  def __init__(self, workdir: str, *, tensorboard: bool, enabled: bool = True):
    self.enabled = enabled
    self._path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if enabled and tensorboard:
      self._tb = _summary_writer_class()(os.path.join(workdir, "tensorboard"))

  def truncate_after(self, step: int) -> None:
    """Drops records after `step`: a resumed run rewrites the steps the killed run had logged."""
    if not self.enabled or not os.path.exists(self._path):
      return
    with open(self._path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(self._path, "w") as f:
      f.writelines(kept)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    with open(self._path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for name, value in metrics.items():
        if math.isfinite(float(value)):
          self._tb.add_scalar(name, float(value), int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """All records of workdir/metrics.jsonl, in order."""
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]


def latest_metrics(workdir: str) -> dict[str, float]:
  """The newest value of every metric in workdir/metrics.jsonl (empty if there is none)."""
  if not os.path.exists(os.path.join(workdir, METRICS_FILE)):
    return {}
  latest: dict[str, float] = {}
  for record in read_metrics(workdir):
    latest.update({k: v for k, v in record.items() if k != "step"})
  return latest


class ProgressBar:
  """tqdm bar with step, loss, throughput and the time left."""

  def __init__(self, total: int, initial: int, unit: str, enabled: bool):
    self._bar = tqdm_auto.tqdm(total=total, initial=initial, unit="step", disable=not enabled,
                          dynamic_ncols=True)
    self._unit = unit

  def update(self, steps: int, loss: float | None = None, rate: float | None = None) -> None:
    postfix = {}
    if loss is not None:
      postfix["loss"] = f"{loss:.4f}"
    if rate is not None:
      postfix[f"{self._unit}/s"] = f"{rate:,.0f}"
    if postfix:
      self._bar.set_postfix(postfix, refresh=False)
    self._bar.update(steps)

  def write(self, text: str) -> None:
    self._bar.write(text)

  def close(self) -> None:
    self._bar.close()
