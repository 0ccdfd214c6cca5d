"""Grain input pipelines over in-memory example arrays.

Training: shuffled with a seed, reshuffled every epoch, repeated forever, batched; each host reads
only its slice. The iterator's state (a position) is saved with every checkpoint, so a resumed run
sees exactly the batches the uninterrupted run would have. Evaluation: one fixed pass in order, the
last batch padded with rows whose `example_weight` is 0, so no held-out example is dropped.
"""
from typing import Callable, Iterator

import grain
import numpy as np

EXAMPLE_WEIGHT = "example_weight"


class ArraySource:
  """Random access over rows of equal-length numpy arrays (a grain RandomAccessDataSource)."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"arrays differ in length: {lengths}")
    self._arrays = arrays
    self._len = next(iter(lengths.values()))

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in self._arrays.items()}


def _with_weights(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  n = len(next(iter(arrays.values())))
  return {**arrays, EXAMPLE_WEIGHT: np.ones((n,), np.float32)}


def train_dataset(arrays: dict[str, np.ndarray], *, batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """An infinite, shuffled, batched dataset of this host's share of the examples.

  Args:
    arrays: name -> [num_examples, ...] arrays.
    batch_size: per-host batch size.
    seed: shuffle seed; each epoch is shuffled differently from it.
    process_index, process_count: this host's slice of the examples.
  """
  ds = grain.MapDataset.source(ArraySource(_with_weights(arrays)))
  ds = ds[process_index::process_count]
  return ds.shuffle(seed=seed).repeat(None).batch(batch_size, drop_remainder=True)


def eval_batches(arrays: dict[str, np.ndarray], *, batch_size: int, max_batches: int = -1,
                 process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Yields this host's held-out batches in order; the last is padded to `batch_size`.

  Every host yields the same number of batches (a host whose slice is one example shorter ends
  with a batch of zero weight), because each batch is one collective step on all hosts: a host
  that stopped early would leave the others waiting forever. `max_batches` > 0 stops after that
  many batches (the same ones every time).
  """
  num_examples = len(next(iter(arrays.values())))
  num_batches = -(-(-(-num_examples // process_count)) // batch_size)  # Of the longest slice.
  if max_batches > 0:
    num_batches = min(num_batches, max_batches)
  ds = grain.MapDataset.source(ArraySource(_with_weights(arrays)))
  batches = iter(ds[process_index::process_count].batch(batch_size, drop_remainder=False))
  empty = {k: np.zeros((0,) + v.shape[1:], v.dtype) for k, v in _with_weights(arrays).items()}
  for _ in range(num_batches):
    batch = next(batches, empty)
    n = len(batch[EXAMPLE_WEIGHT])
    if n < batch_size:
      batch = {k: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch


def host_pipelines(train_arrays: dict[str, np.ndarray], eval_arrays: dict[str, np.ndarray], *,
                   global_batch_size: int, grad_accum_steps: int, eval_max_batches: int,
                   seed: int, process_index: int, process_count: int
                   ) -> tuple[grain.MapDataset, Callable[[], Iterator[dict[str, np.ndarray]]]]:
  """This host's training dataset and a factory of held-out passes, as a Task takes them.

  The training batch is this host's share of the global batch; held-out batches are one
  microbatch (the global batch over grad_accum_steps), the size a train step processes at once.
  """
  train = train_dataset(train_arrays, batch_size=global_batch_size // process_count, seed=seed,
                        process_index=process_index, process_count=process_count)
  eval_batch = global_batch_size // grad_accum_steps // process_count
  return train, lambda: eval_batches(eval_arrays, batch_size=eval_batch,
                                     max_batches=eval_max_batches, process_index=process_index,
                                     process_count=process_count)
