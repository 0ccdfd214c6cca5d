"""Per-host data: each host reads its own slice, and every host runs the same number of eval steps."""
import numpy as np

from gen_jax.data import EXAMPLE_WEIGHT, eval_batches, train_dataset


def _arrays(n):
  return {"x": np.arange(n, dtype=np.int32)[:, None] * np.ones((1, 3), np.int32)}


def test_hosts_train_on_disjoint_slices_that_cover_the_data():
  arrays = _arrays(12)
  seen = []
  for host in range(3):
    ds = train_dataset(arrays, batch_size=2, seed=0, process_index=host, process_count=3)
    epoch = np.concatenate([ds[i]["x"][:, 0] for i in range(2)])  # 4 examples per host per epoch.
    seen.append(set(epoch.tolist()))
  assert all(len(s) == 4 for s in seen)
  assert set.union(*seen) == set(range(12)) and sum(len(s) for s in seen) == 12


def test_eval_hosts_yield_equal_batch_counts_and_every_example_once():
  arrays = _arrays(11)  # Host 0 gets 6 examples, host 1 gets 5: 3 batches of 2 each.
  per_host = [list(eval_batches(arrays, batch_size=2, process_index=h, process_count=2))
              for h in range(2)]
  assert [len(b) for b in per_host] == [3, 3]
  counted = [int(x) for batches in per_host for b in batches
             for x, w in zip(b["x"][:, 0], b[EXAMPLE_WEIGHT]) if w > 0]
  assert sorted(counted) == list(range(11))
  # 3 examples on 2 hosts, batch 1: host 1 runs out first and pads with a zero-weight batch.
  uneven = [list(eval_batches(_arrays(3), batch_size=1, process_index=h, process_count=2))
            for h in range(2)]
  assert [len(b) for b in uneven] == [2, 2]
  assert [float(b[EXAMPLE_WEIGHT].sum()) for b in uneven[1]] == [1.0, 0.0]


def test_eval_max_batches_caps_every_host_alike():
  per_host = [list(eval_batches(_arrays(11), batch_size=2, max_batches=2, process_index=h,
                                process_count=2)) for h in range(2)]
  assert [len(b) for b in per_host] == [2, 2]
