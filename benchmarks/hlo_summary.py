"""What an optimized HLO module (XLA's `*after_optimizations.txt` dump) runs, loop body by loop body.

  python benchmarks/hlo_summary.py /tmp/device_checks/decode_hlo_1.txt [--top=8]

For the entry computation and every while-loop body: how many operations it launches (kernel-level
instructions: fusions, library calls, copies, ...; not parameters, tuples, bitcasts or constants),
by kind, and the ones with the largest outputs. In single-token decoding every output should be
small (a row of activations, one cache slot): an output the size of a weight matrix, or of the
whole KV cache, inside the token loop is a copy made every step, the bytes the roofline pays twice
for (except a dynamic-update-slice fusion's: its output is the array it updates in place, of
which it writes one slot). benchmarks/device_checks.sh's decode_hlo stage brings the 1.1B decode
loop's modules back for this, and benchmarks/aot_hlo.py compiles them for a GPU on any machine.

Each computation also gets an estimate of the memory traffic of one execution: every kernel reads
each operand once and writes its output once, except that a slice (alone or inside a fusion, as
in XLA:GPU's dynamic-slice fusion of a library call) reads only what it keeps, an in-place update
moves only the slot it writes, and a library call's workspace (cuBLAS') is not an output; a while
loop of known trip count inside counts its body that many times, and a conditional its costliest
branch. Against the bytes a decoding step must read (parameters and cache), it says
how far above the bandwidth roofline the compiled step is bound to stay, before any timing.
"""
import collections
import math
import re
import sys

from absl import app, flags

DTYPE_BITS = {"pred": 8, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "f8e4m3fn": 8, "f8e5m2": 8,
              "s16": 16, "u16": 16, "f16": 16, "bf16": 16, "s32": 32, "u32": 32, "f32": 32,
              "s64": 64, "u64": 64, "f64": 64, "c64": 64, "c128": 128}
# Instructions that launch nothing: bookkeeping, aliasing, constants, and "allocate-buffer" (parse's
# name for XLA:GPU's AllocateBuffer custom call: a buffer left unwritten for a loop to fill).
FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all",
        "partition-id", "replica-id", "opt-barrier", "allocate-buffer"}
_COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([\w\-]+)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\dm\d(?:fn)?)?)\[([\d,]*)\](\{[^}]*\})?")
_ON_CHIP = re.compile(r"S\([1-9]")  # A layout's memory space other than 0 (XLA:TPU's VMEM, SMEM).


def array_bytes(shape: str, on_chip: bool | None = None) -> int:
  """Bytes of every array in an HLO shape string (a tuple's arrays summed); with on_chip True or
  False, only those a layout places in on-chip memory (XLA:TPU's memory spaces S(1), S(2)...) or
  only the others (device memory: XLA:GPU's arrays all are)."""
  total = 0
  for dtype, dims, layout in _ARRAY.findall(shape):
    if dtype in DTYPE_BITS and on_chip in (None, bool(_ON_CHIP.search(layout))):
      total += math.prod(int(d) for d in dims.split(",") if d) * DTYPE_BITS[dtype] // 8
  return total


def display_shape(shape: str) -> str:
  """An HLO shape string without its layouts."""
  return re.sub(r"\{[^}]*\}", "", shape)


def parse(text: str) -> tuple[dict[str, list[tuple]], str | None]:
  """({computation: [(name, opcode, output bytes, shape with layouts, rest of line)]}, entry
  name)."""
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
      if opcode == "custom-call" and 'custom_call_target="AllocateBuffer"' in rest:
        opcode = "allocate-buffer"
      size = array_bytes(shape) - _workspace_bytes(shape, opcode, rest)
      computations[current].append((name, opcode, size, shape, rest))
  return computations, entry


_WORKSPACE = re.compile(r", s8\[(\d+)\]\{0\}\)$")


def _workspace_bytes(shape: str, opcode: str, rest: str) -> int:
  """The scratch a library call's output tuple ends with (cuBLAS' and cuDNN's workspace, s8[N]):
  memory the call may use, not an array it writes for anyone to read."""
  library = (opcode == "custom-call" and re.search(r'custom_call_target="__cu(blas|dnn)', rest)
             or opcode == "fusion" and "kind=kCustom" in rest)
  workspace = _WORKSPACE.search(shape) if library else None
  return int(workspace.group(1)) if workspace else 0


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


_OPERANDS = re.compile(r"%([\w.\-]+)")
_CALLS = re.compile(r"(?:calls|body)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"(?:true_computation|false_computation)=%?([\w.\-]+)"
                       r"|branch_computations=\{([^}]*)\}")


def _branches(rest: str) -> list[str]:
  """The computations a conditional chooses between."""
  names = []
  for single, listed in _BRANCHES.findall(rest):
    names += [single] if single else [n.strip().lstrip("%") for n in listed.split(",")]
  return names


def _costliest_branch(computations: dict, rest: str) -> str:
  """A conditional runs one branch: the estimate takes the one that moves the most bytes."""
  return max(_branches(rest), key=lambda branch: traffic(computations, branch))
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CONDITION = re.compile(r"condition=%?([\w.\-]+)")
_INTEGER = re.compile(r"(\d+)\)")  # A constant instruction's operand text: "22)".


def trip_count(computations: dict, rest: str) -> int | None:
  """How many times a while loop runs its body: XLA:GPU's known_trip_count, else (XLA:TPU's HLO
  carries none) N from a condition that is one `counter < N` against a constant, the counter
  counting from 0 by 1 as lax.scan's and fori_loop's do; None when neither says."""
  known = _TRIP_COUNT.search(rest)
  if known:
    return int(known.group(1))
  condition = _CONDITION.search(rest)
  ops = computations.get(condition.group(1), []) if condition else []
  constants = {op[0]: int(_INTEGER.match(op[4]).group(1)) for op in ops
               if op[1] == "constant" and _INTEGER.match(op[4])}
  compares = [op for op in ops if op[1] == "compare" and "direction=LT" in op[4]]
  if len(ops) and ops[-1] in compares and len(compares) == 1:
    bound = [constants[o] for o in _operand_names(compares[0][4]) if o in constants]
    return bound[0] if len(bound) == 1 else None
  return None


def _operand_names(rest: str) -> list[str]:
  """The instruction's operands: the names inside its call parentheses, before the attributes."""
  depth, end = 1, 0
  for end, char in enumerate(rest):
    depth += {"(": 1, ")": -1}.get(char, 0)
    if depth == 0:
      break
  return list(dict.fromkeys(_OPERANDS.findall(rest[:end])))  # Each operand read once.


def op_traffic(computations: dict, name: str) -> list[tuple[int, tuple]]:
  """(estimated bytes moved, instruction) for each instruction of computation `name` that moves
  any (see the module doc)."""
  # What an instruction reads of an operand in device memory (an on-chip one is not traffic).
  sizes = {op[0]: op[2] - array_bytes(op[3], on_chip=True) for op in computations.get(name, [])}
  starts = {op[0]: op for op in computations.get(name, []) if op[1] == "fusion-start"}
  found = []
  for op in computations.get(name, []):
    op_name, opcode, size, shape, rest = op
    written_here = size - array_bytes(shape, on_chip=True)  # On-chip outputs are not traffic.
    if opcode in FREE or opcode in ("fusion-start", "async-start", "copy-start", "slice-start"):
      continue  # Async starts: their done carries the result (counted there).
    if opcode == "fusion-done" and _operand_names(rest)[:1] and _operand_names(rest)[0] in starts:
      # An asynchronous fusion: the start's operands and kernel, the done's output.
      opcode, rest = "fusion", starts[_operand_names(rest)[0]][4]
    called = _CALLS.search(rest)
    what = op_name + " " + (called.group(1) if called else "") + " " + opcode
    if opcode == "while":
      moved = traffic(computations, called.group(1)) * (trip_count(computations, rest) or 1)
    elif "update_slice" in what or "update-slice" in what:  # In place: reads and writes a slot.
      operands = sorted((sizes.get(o, 0) for o in _operand_names(rest)), reverse=True)
      moved = 2 * sum(operands[1:])  # All but the buffer updated (the largest operand).
    elif opcode != "fusion" and ("slice" in what or opcode in ("copy", "fusion-done",
                                                                 "copy-done")):
      # Reads what it keeps, writes it (a fusion's slices: _fused_io); XLA:TPU's copies into
      # on-chip memory (weights staged for the next kernels) write nothing to device memory.
      moved = size + written_here
    elif opcode == "conditional":
      moved = traffic(computations, _costliest_branch(computations, rest))
    elif opcode == "call":
      continue
    else:
      read, written = _fused_io(computations, called.group(1) if called else None)
      moved = (written_here if written is None else written) + sum(
          read.get(i, _operand_read(computations, name, o, sizes.get(o, 0), rest))
          for i, o in enumerate(_operand_names(rest)))
    found.append((moved, op))
  return found


# gen_jax's flash kernel over stacked keys and values (kernels.flash_attention_at_layer) reads
# one layer of each [layers, ...] operand; its name, in the call's metadata, says so.
_AT_LAYER_KERNEL = "flash_attention_at_layer"


def _operand_read(computations: dict, name: str, operand: str, size: int, rest: str) -> int:
  """What an instruction reads of an operand: all of it, except a layer of a stack for the
  at-layer flash kernel (a custom call's reads are not in the HLO; this one's are known)."""
  if _AT_LAYER_KERNEL not in rest:
    return size
  shape = next((op[3] for op in computations.get(name, []) if op[0] == operand), "")
  dims = _ARRAY.search(shape)
  layers = [int(d) for d in dims.group(2).split(",") if d] if dims else []
  return size // layers[0] if len(layers) == 5 else size


def _fused_io(computations: dict, fused: str | None) -> tuple[dict[int, int], int | None]:
  """({operand index: bytes read}, bytes written or None) where a fused computation reads or
  writes less than whole operands and outputs: an operand it only slices (a layer's weights taken
  out of the stacks inside the kernel that uses them) is read for the slices' bytes; an output
  that is an in-place update of an operand (the root, or an element of a root tuple, is a
  dynamic-update-slice of a parameter: a layer's activations saved into the stacks for the
  backward pass) writes the update's bytes, and that operand is not read."""
  ops = computations.get(fused, [])
  if not ops:
    return {}, None
  by_name = {op[0]: op for op in ops}
  parameters = {name: int(rest.split(")")[0]) for name, opcode, _, _, rest in ops
                if opcode == "parameter"}
  for name, opcode, _, _, rest in ops:  # A bitcast of a parameter reads what the parameter does.
    if opcode == "bitcast" and _operand_names(rest)[:1] and _operand_names(rest)[0] in parameters:
      parameters[name] = parameters[_operand_names(rest)[0]]
  read = {}
  for _, opcode, size, _, rest in ops:
    if opcode in ("dynamic-slice", "slice", "gather"):  # Reads what it keeps of operand 0.
      source = _operand_names(rest)[:1]
      if source and source[0] in parameters:
        index = parameters[source[0]]
        read[index] = read.get(index, 0) + size
    elif opcode == "fusion" and _CALLS.search(rest):  # A nested fusion (XLA:TPU's) slicing it.
      nested, _ = _fused_io(computations, _CALLS.search(rest).group(1))
      for position, operand in enumerate(_operand_names(rest)):
        if operand in parameters and position in nested:
          read[parameters[operand]] = read.get(parameters[operand], 0) + nested[position]
  root = ops[-1]  # XLA prints a computation's ROOT last.
  outputs = ([by_name[o] for o in _operand_names(root[4]) if o in by_name]
             if root[1] == "tuple" else [root])
  written, in_place = 0, False
  for _, opcode, size, _, rest in outputs:
    operands = _operand_names(rest)
    if opcode == "dynamic-update-slice" and operands and operands[0] in parameters:
      read[parameters[operands[0]]] = 0
      written += by_name[operands[1]][2] if operands[1] in by_name else 0
      in_place = True
    else:
      written += size
  return read, written if in_place else None


def _is_matmul(op_name: str, opcode: str, rest: str) -> bool:
  """Library and Pallas calls, XLA:GPU's GEMM fusions, XLA:TPU's output fusions (a convolution
  or dot and its epilogue)."""
  called = _CALLS.search(rest)
  return (opcode == "custom-call" or "gemm" in op_name or "dot" in op_name
          or "kind=kOutput" in rest or bool(called and "gemm" in called.group(1)))


def program_kernels(computations: dict, name: str, trips: int = 1) -> list[tuple]:
  """(bytes moved in all, executions, instruction, matmul or not) of every kernel one execution of
  computation `name` runs, loops of known trip count unrolled (see `traffic_by_kind`)."""
  found = []
  for moved, op in op_traffic(computations, name):
    op_name, opcode, _, _, rest = op
    if opcode == "while":
      found += program_kernels(computations, _CALLS.search(rest).group(1),
                               trips * (trip_count(computations, rest) or 1))
    elif opcode == "conditional":
      found += program_kernels(computations, _costliest_branch(computations, rest), trips)
    else:
      found.append((moved * trips, trips, op, _is_matmul(op_name, opcode, rest)))
  return found


def traffic_by_kind(computations: dict, name: str, trips: int = 1,
                    totals: dict | None = None) -> dict[str, list]:
  """{"matmul": [bytes, kernels], "other": [bytes, kernels]} of everything one execution of
  computation `name` runs, loops of known trip count unrolled: "matmul" are the kernels that do a
  product's arithmetic (GEMM fusions, library and Pallas calls), whose bytes overlap their compute;
  "other" (elementwise, reductions, copies, fills) are bound by memory, so their bytes over the
  bandwidth are time a step spends on top of its products."""
  totals = {"matmul": [0, 0], "other": [0, 0]} if totals is None else totals
  for moved, executions, _, is_matmul in program_kernels(computations, name, trips):
    totals["matmul" if is_matmul else "other"][0] += moved
    totals["matmul" if is_matmul else "other"][1] += executions
  return totals


def traffic(computations: dict, name: str) -> int:
  """Estimated bytes one execution of computation `name` reads and writes."""
  return sum(moved for moved, _ in op_traffic(computations, name))


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
                 + ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
                 + f"; est. traffic {traffic(computations, name) / 2**20:.1f} MiB per execution")
    lines.append(f"  {'output MiB':>12s} {'traffic MiB':>12s}  largest outputs, then most traffic")
    by_size = sorted(ops, key=lambda op: -op[2])[:top]
    moving = [op for _, op in sorted(op_traffic(computations, name), key=lambda t: -t[0])
              if op not in by_size][:top]
    moved = {op[0]: m for m, op in op_traffic(computations, name)}
    for op_name, opcode, size, shape, rest in by_size + moving:
      lines.append(f"  {size / 2**20:12.3f} {moved.get(op_name, 0) / 2**20:12.3f}  "
                   f"{_kind(opcode, rest):28s} {display_shape(shape)}  {op_name}")
  return "\n".join(lines)


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("give one or more HLO text files")
  for path in argv[1:]:
    with open(path) as f:
      print(f"### {path}\n{summarize(f.read(), _TOP.value)}\n")


if __name__ == "__main__":  # The flag only here: aot_hlo.py imports this module.
  _TOP = flags.DEFINE_integer("top", 8, "Instructions listed per computation, by each measure.")
  sys.setrecursionlimit(10000)
  app.run(main)
