"""Counting the collectives of a compiled XLA program from its HLO text.

`count_collectives(compiled.as_text())` lists every all-reduce, all-gather,
reduce-scatter, all-to-all and collective-permute (also their asynchronous
`-start` forms; the matching `-done` ops are not counted again) with the bytes it
moves, and `summarize` totals them by kind. The byte figure of one op is the size
of its full (unsharded) buffer on one device:

* all-reduce, all-to-all, collective-permute: the result (a combined all-reduce
  returns a tuple: all its elements are summed);
* all-gather: the gathered result;
* reduce-scatter: the operand (the full gradient before it is scattered).

These are counts of the program text: an op inside a loop body (`while`,
`lax.map`, `lax.scan`) is counted once, however often the loop runs.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, Iterable, List

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2,
    "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
    "c128": 16,
}

# `%name = <shape> <opcode>(<operands>), attributes`; the shape may be a (nested) tuple.
_HEAD = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*")
_OPCODE = re.compile(r"\s*(?P<op>[\w\-]+)\(")
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+[0-9]*[a-z0-9]*)\[(?P<dims>[0-9,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
  """One collective op of a compiled program.

  Attributes:
    kind: one of `KINDS`.
    name: the HLO instruction name.
    bytes: bytes of its full buffer on one device (see the module doc).
    shape: the HLO shape text the bytes were taken from.
  """

  kind: str
  name: str
  bytes: int
  shape: str


def shape_bytes(shape: str) -> int:
  """Total bytes of every array in an HLO shape text, e.g. `(f32[2,3]{1,0}, bf16[4])` -> 32."""
  total = 0
  for m in _ARRAY.finditer(shape):
    if m.group("dtype") not in DTYPE_BYTES:
      continue  # e.g. token[] or an unknown type: no payload we can size
    size = 1
    for d in filter(None, m.group("dims").split(",")):
      size *= int(d)
    total += size * DTYPE_BYTES[m.group("dtype")]
  return total


def _tuple_elements(shape: str) -> List[str]:
  """Top-level elements of a tuple shape text (the shape itself when it is no tuple)."""
  shape = shape.strip()
  if not shape.startswith("("):
    return [shape]
  parts, depth, start = [], 0, 1
  for i, ch in enumerate(shape):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 1:
      parts.append(shape[start:i])
      start = i + 1
  parts.append(shape[start:-1])
  return [p.strip() for p in parts if p.strip()]


def _balanced(text: str, start: int) -> int:
  """Index just past the bracket group opening at `text[start]`."""
  depth = 0
  for i in range(start, len(text)):
    if text[i] in "([{":
      depth += 1
    elif text[i] in ")]}":
      depth -= 1
      if depth == 0:
        return i + 1
  return len(text)


def _parse(line: str):
  """(name, shape, opcode, operand names) of one HLO instruction line, or None."""
  head = _HEAD.match(line)
  if not head:
    return None
  pos = head.end()
  if line.startswith("(", pos):
    end = _balanced(line, pos)
  else:
    end = pos
    while end < len(line) and not line[end].isspace():
      if line[end] in "[{":
        end = _balanced(line, end)
      else:
        end += 1
  op = _OPCODE.match(line, end)
  if not op:
    return None
  close = _balanced(line, op.end() - 1)
  group = line[op.end() - 1:close]
  operands = [o.split()[-1].lstrip("%") for o in _tuple_elements(group)] if group != "()" else []
  return head.group("name"), line[pos:end], op.group("op"), operands


def _kind(op: str):
  """(kind, is_async_start) for a collective opcode, or (None, False)."""
  if op.endswith("-start"):
    base = op[:-len("-start")]
    return (base, True) if base in KINDS else (None, False)
  return (op, False) if op in KINDS else (None, False)


def count_collectives(hlo_text: str) -> List[Collective]:
  """Every collective op in the HLO text of a compiled program, in program order.

  Args:
    hlo_text: `jax.jit(f).lower(...).compile().as_text()`.

  Returns:
    One `Collective` per op (asynchronous ops once, at their `-start`).
  """
  shapes: Dict[str, str] = {}
  found = []
  for line in hlo_text.splitlines():
    parsed = _parse(line)
    if parsed is None:
      continue
    name, shape, op, operands = parsed
    shapes[name] = shape
    kind, is_start = _kind(op)
    if kind is None:
      continue
    if kind == "reduce-scatter":
      shape = "(" + ", ".join(shapes.get(o, "") for o in operands) + ")"
    elif is_start and kind != "all-reduce":
      # (operands, results, ...scratch): the results are the second element.
      elements = _tuple_elements(shape)
      shape = elements[1] if len(elements) > 1 else shape
    found.append(Collective(kind, name, shape_bytes(shape), shape))
  return found


def summarize(collectives: Iterable[Collective]) -> Dict[str, Dict[str, int]]:
  """`{kind: {'count': n, 'bytes': total}}` for every kind in `KINDS` (zeros included)."""
  table = {kind: {"count": 0, "bytes": 0} for kind in KINDS}
  for c in collectives:
    table[c.kind]["count"] += 1
    table[c.kind]["bytes"] += c.bytes
  return table
