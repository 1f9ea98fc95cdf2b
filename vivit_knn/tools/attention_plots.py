"""Pictures of the attention tools (matplotlib's Agg backend; the GIF assembled with PIL)."""

from __future__ import annotations

import io
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
  kept = panel.kept[column]
  if panel.layout == "frames":  # the key is the whole frame
    share = float(np.nanmax(kept)) if np.any(np.isfinite(kept)) else 0.0
    if share > 0:
      ax.add_patch(patches.Rectangle((0.5, 0.5), frame.shape[1] - 2, frame.shape[0] - 2,
                                     fill=False, edgecolor=KEPT_COLOUR, linewidth=2.0,
                                     alpha=share))
  elif not panel.layout.endswith("rollout"):
    for (y, x), share in np.ndenumerate(kept):
      if not np.isnan(share) and share > 0:
        # Inset by a pixel so that neighbouring kept keys stay separate boxes.
        ax.add_patch(patches.Rectangle((x * pw + 0.5, y * ph + 0.5), pw - 2, ph - 2,
                                       fill=False, edgecolor=KEPT_COLOUR, linewidth=1.0,
                                       alpha=share))
  if query is not None and query[0] == column:
    y, x = query[1], query[2]
    ax.add_patch(patches.Rectangle((x * pw - 0.5, y * ph - 0.5), pw, ph, fill=False,
                                   edgecolor=QUERY_COLOUR, linewidth=2.0, linestyle="--"))
  if panel.cls[column] is not None:
    weight, share = panel.cls[column]
    ax.text(0.02, 0.98, f"CLS {weight:.2f}" + ("" if panel.layout.endswith("rollout")
                                              else f" kept {share:.0%}"),
            transform=ax.transAxes, va="top", ha="left", fontsize=6, color="white",
            bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
  ax.set_xticks([])
  ax.set_yticks([])
  return image


def _norm(panel: Panel) -> colors.Normalize:
  """Colour scale of one layer's weights: 0 to its largest weight (1 when it has none)."""
  vmax = float(np.nanmax(panel.weights)) if np.isfinite(np.nanmax(panel.weights)) else 1.0
  return colors.Normalize(vmin=0.0, vmax=max(vmax, 1e-6))


def _row_label(panel: Panel) -> str:
  if panel.layout.endswith("rollout"):
    return f"{_short(panel.name)}\n(rollout)"
  return f"{_short(panel.name)}\n{panel.layout}: keeps {panel.kept_per_query:.1f}/{panel.num_keys}"


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
    norm = _norm(panel)
    image = None
    for c in range(t):
      image = _draw_cell(axes[r, c], frames[c * pt], panel, c, norm, (ph, pw), query)
      if r == 0:
        axes[r, c].set_title(f"frames {c * pt}-{c * pt + pt - 1}", fontsize=7)
    axes[r, 0].set_ylabel(_row_label(panel), fontsize=6, rotation=0, ha="right", va="center")
    bar = fig.colorbar(image, ax=list(axes[r]), fraction=0.02, pad=0.01)
    bar.ax.tick_params(labelsize=5)
    bar.set_label("weight", fontsize=5)
  fig.suptitle(title, fontsize=8)
  fig.text(0.01, 0.005, "colour: attention weight (mean over heads); cyan box: key kept "
           "(opacity = share of heads); red dashes: the query", fontsize=6)
  fig.savefig(path, bbox_inches="tight")
  plt.close(fig)
  return path


def write_gif(panels: Sequence[Panel], frames: np.ndarray, patch_size: Sequence[int],
              title: str, path: str, query=None, duration_ms: int = 400) -> str:
  """GIF: one image per input frame, the layers stacked down, each over its tubelet's overlay."""
  ph, pw, pt = patch_size
  norms = [_norm(panel) for panel in panels]
  images = []
  for i in range(frames.shape[0]):
    c = min(i // pt, panels[0].weights.shape[0] - 1)
    fig, axes = plt.subplots(1, len(panels), figsize=(1.45 * len(panels), 1.9), squeeze=False,
                             dpi=72)
    for r, (panel, norm) in enumerate(zip(panels, norms)):
      _draw_cell(axes[0, r], frames[i], panel, c, norm, (ph, pw), query)
      axes[0, r].set_title(_short(panel.name), fontsize=4)
    fig.suptitle(f"{title}  frame {i}", fontsize=6)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    buffer.seek(0)
    images.append(Image.open(buffer).convert("P", palette=Image.ADAPTIVE))
  images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
  return path


def plot_sweep(result: Dict[str, Any], path: str) -> str:
  """PNG: top-1 against k (with the trained and dense rows as lines), and top-k mass per layer."""
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=90)
  rows = [r for r in result["rows"] if r["k"] is not None]
  labels = [str(r["k"]) for r in rows]
  left.plot(range(len(rows)), [r["top1"] for r in rows], "o-", label="k-NN at k")
  for r, style in zip([r for r in result["rows"] if r["k"] is None], ("--", ":")):
    left.axhline(r["top1"], linestyle=style, color="grey" if style == "--" else "black",
                 label=f"{r['name']} ({r['top1']:.3f})")
  left.set_xticks(range(len(rows)), labels)
  left.set_xlabel("k (fraction of keys, or count)")
  left.set_ylabel("eval top-1")
  left.set_title(f"top-1 against k ({', '.join(result['fields'])})", fontsize=7)
  left.legend(fontsize=7)
  for layer, m in result["mass"].items():
    n = m["num_keys"]
    right.plot(np.arange(1, n + 1) / n, m["curve"], label=f"{_short(layer)} ({n})")
  right.set_xlabel("k / n (share of keys kept)")
  right.set_ylabel("share of attention mass in top-k keys")
  right.set_title("dense attention: top-k mass per layer", fontsize=8)
  right.set_ylim(0, 1.02)
  right.legend(fontsize=5)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path
