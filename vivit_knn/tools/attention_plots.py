"""Pictures of the attention tools (matplotlib's Agg backend; the GIF assembled with PIL)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top
from matplotlib import colors, patches  # noqa: E402  pylint: disable=g-import-not-at-top
from PIL import Image  # noqa: E402  pylint: disable=g-import-not-at-top

from vivit_knn.tools.attention_panels import Panel  # noqa: E402

CMAP = "inferno"
KEPT_COLOUR = "#00e5ff"
QUERY_COLOUR = "#ff3b30"


def display_frames(clip: np.ndarray) -> np.ndarray:
  """`[T, H, W, C]` model input -> `[T, H, W, 3]` in [0, 1], scaled over the whole clip."""
  clip = np.asarray(clip, np.float32)
  lo, hi = float(clip.min()), float(clip.max())
  out = (clip - lo) / (hi - lo) if hi > lo else np.zeros_like(clip)
  return out[..., :3] if out.shape[-1] >= 3 else np.repeat(out[..., :1], 3, -1)


def _short(name: str) -> str:
  """A layer name short enough for a row label (the JSON keeps the full name)."""
  for long, short in (("MultiHeadDotProductAttention", "MHA"), ("encoderblock_", "block"),
                      ("Transformer", "")):
    name = name.replace(long, short)
  return name.lstrip("/")


def _draw_cell(ax, frame: np.ndarray, panel: Panel, column: int, norm, patch_hw: Tuple[int, int],
               query: Optional[Tuple[int, int, int]]) -> Any:
  """Frame, weight overlay, kept-key outlines (and the query) of one layer at one frame column."""
  ph, pw = patch_hw
  ax.imshow(frame, interpolation="nearest")
  heat = np.kron(np.nan_to_num(panel.weights[column], nan=0.0), np.ones((ph, pw)))
  alpha = np.kron(np.where(np.isnan(panel.weights[column]), 0.0, 0.65), np.ones((ph, pw)))
  image = ax.imshow(heat, cmap=CMAP, norm=norm, alpha=alpha, interpolation="nearest")
  kept = np.nan_to_num(panel.kept[column])
  boxes = []  # ((x, y), width, height, line width, share of heads)
  if panel.layout == "frames":  # the key is the whole frame
    boxes = [((0.5, 0.5), frame.shape[1] - 2, frame.shape[0] - 2, 2.0, float(kept.max()))]
  elif not panel.layout.endswith("rollout"):  # inset a pixel: neighbouring keys stay apart
    boxes = [((x * pw + 0.5, y * ph + 0.5), pw - 2, ph - 2, 1.0, share)
             for (y, x), share in np.ndenumerate(kept)]
  for xy, width, height, line, share in (box for box in boxes if box[-1] > 0):
    ax.add_patch(patches.Rectangle(xy, width, height, fill=False, edgecolor=KEPT_COLOUR,
                                   linewidth=line, alpha=share))
  if query is not None and query[0] == column:
    ax.add_patch(patches.Rectangle((query[2] * pw - 0.5, query[1] * ph - 0.5), pw, ph, fill=False,
                                   edgecolor=QUERY_COLOUR, linewidth=2.0, linestyle="--"))
  if panel.cls[column] is not None:
    weight, share = panel.cls[column]
    ax.text(0.02, 0.98, f"CLS {weight:.2f}" + ("" if panel.layout.endswith("rollout")
                                              else f" kept {share:.0%}"),
            transform=ax.transAxes, va="top", ha="left", fontsize=6, color="white",
            bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
  ax.set(xticks=[], yticks=[])
  return image


def _norm(panel: Panel) -> colors.Normalize:
  """Colour scale of one layer's weights: 0 to its largest weight (1 when it has none)."""
  vmax = float(np.nanmax(panel.weights)) if np.isfinite(np.nanmax(panel.weights)) else 1.0
  return colors.Normalize(vmin=0.0, vmax=max(vmax, 1e-6))


def row_label(panel: Panel) -> str:
  """Two lines, the layer and `<layout>: keeps <mean kept keys>/<keys>`; a rollout: its name."""
  if panel.layout.endswith("rollout"):  # named '<first>..<last> rollout'
    return _short(panel.name)
  return f"{_short(panel.name)}\n{panel.layout}: keeps {round(panel.kept_per_query, 1):g}/" \
      f"{panel.num_keys}"


def plot_grid(panels: Sequence[Panel], frames: np.ndarray, patch_size: Sequence[int],
              title: str, path: str, query=None) -> str:
  """PNG: frames across (one per tubelet time), layers down, one colour bar per layer row.

  `frames` is the display clip `[T, H, W, 3]`; `patch_size` is `(h, w, t)`.
  """
  ph, pw, pt = patch_size
  t = panels[0].weights.shape[0]
  fig, axes = plt.subplots(len(panels), t, figsize=(1.5 * t + 1.6, 1.55 * len(panels) + 0.6),
                           squeeze=False, dpi=90)
  for r, panel in enumerate(panels):
    for c in range(t):
      image = _draw_cell(axes[r, c], frames[c * pt], panel, c, _norm(panel), (ph, pw), query)
      if r == 0:
        axes[r, c].set_title(f"frames {c * pt}-{c * pt + pt - 1}", fontsize=7)
    axes[r, 0].set_ylabel(row_label(panel), fontsize=6, rotation=0, ha="right", va="center")
    bar = fig.colorbar(image, ax=list(axes[r]), fraction=0.02, pad=0.01)
    bar.ax.tick_params(labelsize=5)
    bar.set_label("weight", fontsize=5)
  fig.suptitle(title, fontsize=8)
  fig.text(0.01, 0.005, "colour: attention weight (mean over heads); cyan box: key kept (opacity"
           " = share of heads); red dashes: the query", fontsize=6)
  fig.savefig(path, bbox_inches="tight")
  plt.close(fig)
  return path


def write_gif(panels: Sequence[Panel], frames: np.ndarray, patch_size: Sequence[int],
              title: str, path: str, query=None, duration_ms: int = 400) -> str:
  """GIF: one image per input frame (at least 500 px a side), a cell per layer in rows of 3."""
  ph, pw, pt = patch_size
  norms = [_norm(panel) for panel in panels]
  cols, rows = min(3, len(panels)), -(-len(panels) // 3)
  images = []
  for i in range(frames.shape[0]):
    c = min(i // pt, panels[0].weights.shape[0] - 1)
    fig, axes = plt.subplots(rows, cols, figsize=(max(5.0, 2.6 * cols), max(5.0, 2.6 * rows + 0.6)),
                             squeeze=False, dpi=100)
    for ax, panel, norm in zip(axes.flat, panels, norms):
      _draw_cell(ax, frames[i], panel, c, norm, (ph, pw), query)
      ax.set_title(row_label(panel), fontsize=7)
    for ax in axes.flat[len(panels):]:
      ax.axis("off")
    fig.suptitle(f"{title}\nframe {i}", fontsize=8)
    fig.canvas.draw()
    images.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert(
        "RGB").convert("P", palette=Image.ADAPTIVE))
    plt.close(fig)
  images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
  return path


def sweep_figure(result: Dict[str, Any]) -> Any:
  """Top-1 against k (with the trained and dense rows as lines), and top-k mass per layer."""
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=90)
  rows = [r for r in result["rows"] if r["k"] is not None]
  left.plot(range(len(rows)), [r["top1"] for r in rows], "o-", label="k-NN at k")
  for r, style in zip([r for r in result["rows"] if r["k"] is None], ("--", ":")):
    left.axhline(r["top1"], linestyle=style, color="grey" if style == "--" else "black",
                 label=f"{r['name']} ({r['top1']:.3f})")
  left.set_xticks(range(len(rows)), [str(r["k"]) for r in rows])
  left.set(xlabel="k (fraction of keys, or count)", ylabel="eval top-1", ylim=(0, 1))
  left.set_title(f"top-1 against k ({', '.join(result['fields'])})", fontsize=7)
  left.legend(fontsize=7)
  for layer, m in result["mass"].items():
    n = m["num_keys"]
    right.plot(np.arange(1, n + 1) / n, m["curve"], label=f"{_short(layer)} ({n})")
  right.set(xlabel="k / n (share of keys kept)", ylim=(0, 1),
            ylabel="share of attention mass in top-k keys")
  right.set_title("every attention dense: top-k mass per layer", fontsize=8)
  right.legend(fontsize=5)
  fig.tight_layout()
  return fig


def plot_sweep(result: Dict[str, Any], path: str) -> str:
  """PNG of `sweep_figure`."""
  fig = sweep_figure(result)
  fig.savefig(path)
  plt.close(fig)
  return path
