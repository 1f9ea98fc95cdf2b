"""Places one query's recorded attention on the video's token grid, layer by layer.

A layer's record is `[..., H, Nq, Nk]`; its layout, read from the shapes for a `t x h x w`
token grid with an optional CLS token first, is 'space' (one attention per frame over its
patches), 'joint' (one over all `t*h*w` patches), 'frames' (one over `t` frame tokens) or
'time' (one per patch over its `t` positions in time).
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

Query = Optional[Tuple[int, int, int]]  # None = the CLS token


@dataclasses.dataclass
class Panel:
  """One layer's attention of one query, placed on the `[t, h, w]` token grid.

  `weights`, `kept` `[t, h, w]`: the mean weight over the chosen heads and the share of
  them keeping the key (NaN: no such key); `cls` per frame column `(weight, kept share)` of
  the CLS key, or None; `kept_per_query` the mean number of keys the query keeps per head;
  `rows` its raw `{'weights', 'kept'}` rows, `[rows, heads, Nk]`.
  """

  name: str
  layout: str
  weights: np.ndarray
  kept: np.ndarray
  cls: List[Optional[Tuple[float, float]]]
  num_keys: int
  kept_per_query: float
  rows: dict


def parse_query(text: str) -> Query:
  """'cls' -> None; 't,y,x' -> (t, y, x) token-grid coordinates; ValueError otherwise."""
  text = text.strip().lower()
  if text == "cls":
    return None
  parts = text.split(",")
  if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
    raise ValueError(f"--query must be 'cls' or 't,y,x' (tubelet time, patch row, patch "
                     f"column), got {text!r}")
  return tuple(int(p) for p in parts)


def check_query(query: Query, grid: Sequence[int]) -> None:
  """Raises ValueError when `query` lies outside the `(t, h, w)` token grid."""
  if query is not None and not all(0 <= q < g for q, g in zip(query, grid)):
    raise ValueError(f"--query={','.join(map(str, query))} is outside the token grid "
                     f"t,y,x < {','.join(map(str, grid))}")


def layer_layout(shape: Sequence[int], grid: Sequence[int]) -> Optional[str]:
  """The layout of a `[..., H, Nq, Nk]` record of one clip, or None when it fits none."""
  t, h, w = grid
  lead, nk = math.prod(shape[:-3]), shape[-1]
  s = h * w
  return next((layout for layout, rows, keys in (
      ("space", t, (s, s + 1)), ("joint", 1, (t * s, t * s + 1)), ("frames", 1, (t, t + 1)),
      ("time", s, (t,))) if lead == rows and nk in keys), None)


def _rows(layout: str, query: Query, grid, nq: int):
  """`[(row, query index, frame column)]` the query maps to; empty when it has none here."""
  t, h, w = grid
  if query is None:
    if layout == "space" and nq == h * w + 1:
      return [(f, 0, f) for f in range(t)]
    if layout in ("joint", "frames") and nq in (t * h * w + 1, t + 1):
      return [(0, 0, None)]
    return []
  qt, qy, qx = query
  if layout == "space":
    return [(qt, (nq - h * w) + qy * w + qx, qt)]
  if layout == "joint":
    return [(0, (nq - t * h * w) + qt * h * w + qy * w + qx, None)]
  if layout == "frames":
    return [(0, (nq - t) + qt, None)]
  return [(qy * w + qx, qt, None)]  # time


def build_panel(name: str, record: dict, grid: Sequence[int], query: Query,
                heads: Optional[Sequence[int]]) -> Optional[Panel]:
  """The `Panel` of `query` in one layer's record, or None when the query is not in it."""
  shape = np.shape(record["weights"])
  layout = layer_layout(shape, grid)
  if layout is None:
    raise ValueError(f"layer {name}: cannot place attention shaped {shape} on the "
                     f"{'x'.join(map(str, grid))} token grid")
  num_heads, nq, nk = shape[-3:]
  heads = list(heads or range(num_heads))
  bad = [hd for hd in heads if not 0 <= hd < num_heads]
  if bad:
    raise ValueError(f"--heads: layer {name} has heads 0..{num_heads - 1}, got {bad}")
  rows = _rows(layout, query, grid, nq)
  if not rows:
    return None
  weights, kept = (np.asarray(record[key], float).reshape((-1, num_heads, nq, nk))[:, heads]
                   for key in ("weights", "kept"))
  raw_w, raw_k = (np.stack([a[row, :, q] for row, q, _ in rows]) for a in (weights, kept))
  t, h, w = grid
  wmap, kmap = np.full((t, h, w), np.nan), np.full((t, h, w), np.nan)
  cls: List[Optional[Tuple[float, float]]] = [None] * t
  for (_, _, column), wr, kr in zip(rows, raw_w, raw_k):  # [heads, Nk]
    wm, km = wr.mean(0), kr.mean(0)
    off = nk - {"space": h * w, "joint": t * h * w, "frames": t, "time": t}[layout]
    if off:
      for f in (range(t) if column is None else [column]):
        cls[f] = (float(wm[0]), float(km[0]))
    wm, km = wm[off:], km[off:]
    if layout == "space":
      wmap[column], kmap[column] = wm.reshape(h, w), km.reshape(h, w)
    elif layout == "joint":
      wmap[:], kmap[:] = wm.reshape(t, h, w), km.reshape(t, h, w)
    elif layout == "frames":
      wmap[:], kmap[:] = wm[:, None, None], km[:, None, None]
    else:  # time: the query's patch, at each time
      qy, qx = query[1], query[2]
      wmap[:, qy, qx], kmap[:, qy, qx] = wm, km
  return Panel(name, layout, wmap, kmap, cls, nk, float(raw_k.sum(-1).mean()),
               {"weights": raw_w, "kept": raw_k})


def rollout_panels(records: dict, names: Sequence[str], grid: Sequence[int],
                   query: Query) -> List[Panel]:
  """Attention rollout (all heads) of each run of 2+ consecutive equal 'space'/'joint' layers.

  The query's row is placed like a layer of that layout, named '<first>..<last> rollout'.
  """
  from vivit_knn.tools.attention_stats import rollout  # pylint: disable=g-import-not-at-top
  runs: List[List[str]] = [[]]
  for name in names:  # any other layer in between ends a run
    shape = records[name]["weights"].shape
    if layer_layout(shape, grid) not in ("space", "joint"):
      runs.append([])
    elif runs[-1] and records[runs[-1][-1]]["weights"].shape == shape:
      runs[-1].append(name)
    else:
      runs.append([name])
  panels = []
  for run in (run for run in runs if len(run) >= 2):
    rolled = rollout([np.asarray(records[n]["weights"]).mean(-3, keepdims=True) for n in run])
    panel = build_panel(f"{run[0]}..{run[-1].rsplit('/', 2)[-2]} rollout", {
        "weights": rolled, "kept": np.ones(rolled.shape, bool)}, grid, query, None)
    if panel is not None:
      panel.layout = panel.layout + " rollout"
      panels.append(panel)
  return panels
