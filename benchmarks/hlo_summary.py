"""What an optimized HLO module (XLA's `*after_optimizations.txt` dump) runs, loop body by loop body.

  python benchmarks/hlo_summary.py /tmp/device_checks/decode_hlo_1.txt [--top=8]

For the entry computation and every while-loop body: how many operations it launches (kernel-level
instructions: fusions, library calls, copies, ...; not parameters, tuples, bitcasts or constants),
by kind, and the ones with the largest outputs. In single-token decoding every output should be
small (a row of activations, one cache slot): an output the size of a weight matrix, or of the
whole KV cache, inside the token loop is a copy made every step, the bytes the roofline pays twice
for (except a dynamic-update-slice fusion's: its output is the array it updates in place, of
which it writes one slot). benchmarks/device_checks.sh's decode_hlo stage brings the 1.1B decode
loop's modules back for this.
"""
import collections
import math
import re
import sys

from absl import app, flags

_TOP = flags.DEFINE_integer("top", 8, "Largest outputs listed per computation.")

DTYPE_BITS = {"pred": 8, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "f8e4m3fn": 8, "f8e5m2": 8,
              "s16": 16, "u16": 16, "f16": 16, "bf16": 16, "s32": 32, "u32": 32, "f32": 32,
              "s64": 64, "u64": 64, "f64": 64, "c64": 64, "c128": 128}
# Instructions that launch nothing: bookkeeping, aliasing or constants.
FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all",
        "partition-id", "replica-id", "opt-barrier"}
_COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([\w\-]+)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\dm\d(?:fn)?)?)\[([\d,]*)\]")


def array_bytes(shape: str) -> int:
  """Bytes of every array in an HLO shape string (a tuple's arrays summed)."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    if dtype in DTYPE_BITS:
      total += math.prod(int(d) for d in dims.split(",") if d) * DTYPE_BITS[dtype] // 8
  return total


def parse(text: str) -> tuple[dict[str, list[tuple]], str | None]:
  """({computation: [(name, opcode, output bytes, shape, rest of line)]}, entry name)."""
  computations, entry, current = {}, None, None
  for line in text.splitlines():
    match = _COMPUTATION.match(line)  # A header starts its line; instructions are indented.
    if match and not line[:1].isspace():
      current = match.group(2)
      computations[current] = []
      entry = current if match.group(1) else entry
      continue
    match = _INSTRUCTION.match(line)
    if match and current is not None:
      name, shape, opcode, rest = match.groups()
      computations[current].append((name, opcode, array_bytes(shape), shape.split("{")[0], rest))
  return computations, entry


def loop_bodies(computations: dict, root: str) -> list[tuple[str, int]]:
  """(computation, nesting depth) of `root` and every while body reachable from it, outermost
  first (fusion and reduction sub-computations are not followed: they are inside a kernel)."""
  found, stack = [], [(root, 0)]
  while stack:
    name, depth = stack.pop()
    found.append((name, depth))
    for _, opcode, _, _, rest in reversed(computations.get(name, [])):
      if opcode == "while":
        body = re.search(r"body=%?([\w.\-]+)", rest)
        if body:
          stack.append((body.group(1), depth + 1))
      elif opcode in ("call", "conditional"):
        for callee in re.findall(r"(?:to_apply|branch_computations=\{[^}]*|calls)=%?([\w.\-]+)",
                                 rest):
          stack.append((callee, depth))
  return found


def _kind(opcode: str, rest: str) -> str:
  if opcode == "custom-call":
    target = re.search(r'custom_call_target="([^"]+)"', rest)
    return f"custom-call {target.group(1) if target else '?'}"
  if opcode == "fusion":
    kind = re.search(r"kind=(\w+)", rest)
    return f"fusion {kind.group(1) if kind else '?'}"
  return opcode


def summarize(text: str, top: int) -> str:
  computations, entry = parse(text)
  if entry is None:
    raise ValueError("no ENTRY computation: not an HLO module's text")
  lines = []
  for name, depth in loop_bodies(computations, entry):
    ops = [op for op in computations.get(name, []) if op[1] not in FREE]
    kinds = collections.Counter(_kind(opcode, rest) for _, opcode, _, _, rest in ops)
    what = "ENTRY" if name == entry else f"while body (depth {depth})"
    lines.append(f"{what} {name}: {len(ops)} operations, "
                 + ", ".join(f"{count} {kind}" for kind, count in kinds.most_common()))
    for op_name, opcode, size, shape, rest in sorted(ops, key=lambda op: -op[2])[:top]:
      lines.append(f"  {size / 2**20:10.3f} MiB  {_kind(opcode, rest):28s} {shape}  {op_name}")
  return "\n".join(lines)


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("give one or more HLO text files")
  for path in argv[1:]:
    with open(path) as f:
      print(f"### {path}\n{summarize(f.read(), _TOP.value)}\n")


if __name__ == "__main__":
  sys.setrecursionlimit(10000)
  app.run(main)
