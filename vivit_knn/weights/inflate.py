"""Array surgery from image to video shapes: 3D kernels, position and time embeddings."""

from __future__ import annotations

from typing import Sequence, Tuple

import jax
import numpy as np


def inflate_kernel(kernel: np.ndarray, t: int, method: str) -> np.ndarray:
  """2D patch kernel `(h, w, C, D)` -> 3D `(t, h, w, C, D)`.

  'central_frame_initializer': the 2D kernel in slice `t // 2`, zeros elsewhere.
  'average_frame_initializer' (filter inflation): the 2D kernel in every slice,
  divided by t. Either way a static clip gives the image's patch embedding.
  """
  if method == "average_frame_initializer":
    return np.repeat(kernel[None] / t, t, axis=0).astype(kernel.dtype)
  out = np.zeros((t,) + kernel.shape, kernel.dtype)
  out[t // 2] = kernel
  return out


def resize_grid(grid: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
  """Bilinear resize of `(h, w, D)` position embeddings to `size` (half-pixel centres)."""
  out = jax.image.resize(grid.astype(np.float32), tuple(size) + grid.shape[-1:],
                         method="linear", antialias=False)
  return np.asarray(out).astype(grid.dtype)


def square_side(n: int, what: str) -> int:
  """The side of a square grid of `n` position rows; ValueError naming `what` otherwise."""
  side = int(round(n ** 0.5))
  if side * side != n:
    raise ValueError(f"{what}: {n} position rows are not a square grid")
  return side


def adapt_posemb(pos: np.ndarray, src_has_cls: bool, target: np.ndarray,
                 grid: Sequence[int], method: str) -> np.ndarray:
  """Image pos-emb `(1, [1+] n, D)` -> the target's `(1, [1+] t*h*w, D)`.

  `grid` is the target's `(h, w)` patch grid; the target's time positions `t` and
  whether it has a CLS row follow from its length. The patch rows are resized
  (bilinear) when the grids differ and tiled over time when `t > 1`; `method`
  ('tile', 'resize' or 'resize_tile', `init_from.positional_embed_size_change`)
  says which of the two is allowed. A target CLS row comes from the source CLS
  row, or keeps its initial value when the source has none.
  """
  h, w = grid
  t, tgt_cls = divmod(target.shape[1], h * w)
  if tgt_cls not in (0, 1) or t < 1:
    raise ValueError(f"target position embedding {target.shape} does not fit a {h}x{w} grid")
  rows = pos[0, 1:] if src_has_cls else pos[0]
  side = square_side(rows.shape[0], "source position embedding")
  field = "init_from.positional_embed_size_change"
  if (side, side) != (h, w):
    if method == "tile":
      raise ValueError(f"{field}='tile' cannot map a {side}x{side} position grid onto "
                       f"{h}x{w}; use 'resize' or 'resize_tile'")
    rows = resize_grid(rows.reshape(side, side, -1), (h, w)).reshape(h * w, -1)
  if t > 1:
    if method == "resize":
      raise ValueError(f"{field}='resize' cannot tile position embeddings over {t} time "
                       f"positions; use 'tile' or 'resize_tile'")
    rows = np.tile(rows, (t, 1))
  parts = [rows[None]]
  if tgt_cls:
    parts.insert(0, pos[:, :1] if src_has_cls else target[:, :1])
  return np.concatenate(parts, axis=1).astype(target.dtype)


def interpolate_time(embed: np.ndarray, num_frames: int) -> np.ndarray:
  """Time embedding `(1, T, D)` -> `(1, num_frames, D)` by linear interpolation."""
  src = embed.shape[1]
  if src == num_frames:
    return embed
  positions = np.linspace(0, src - 1, num_frames)
  lo = np.floor(positions).astype(int)
  hi = np.minimum(lo + 1, src - 1)
  frac = (positions - lo)[None, :, None]
  return ((1 - frac) * embed[:, lo] + frac * embed[:, hi]).astype(embed.dtype)
