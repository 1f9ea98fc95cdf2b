"""Initialises a fresh video model's parameters from a pretrained checkpoint (`config.init_from`).

From an image ViT (our image tree, or any format `load_checkpoint` converts):

* `embedding/kernel` `(h, w, C, D)` -> `(t, h, w, C, D)` by
  `init_from.kernel_init_method` (central frame, or filter inflation);
* `cls` -> the model's CLS (`cls`, or ViViT-FE's `cls_SpatialTransformer`);
* `Transformer/posembed_input` -> the encoder's position embedding, its patch
  rows resized (bilinear) when the grid differs and tiled over the time
  positions the encoder has (`init_from.positional_embed_size_change`);
* encoder blocks and `encoder_norm` by name (ViViT-FE: into
  `SpatialTransformer`); ViViT model 3's `_time`/`_space` attention and
  LayerNorm and TimeSformer's `temporal_attn`/`temporal_norm1` are copies of the
  spatial ones (or the checkpoint's own temporal weights when it has them);
* `time_embed` and TimeSformer's `temporal_fc` are the checkpoint's (the time
  embedding interpolated over frames if needed) or, from an image model, zeros
  (TimeSformer's and X-ViT's init, whatever `model.time_embed_init_std` and
  `model.temporal_fc_zero_init` say): a divided TimeSformer then starts as the
  image model on a static clip;
* kept as initialised: `output_projection` (the source `head` and
  `pre_logits` are never restored), ViViT-FE's `TemporalTransformer`, X-ViT's
  head and summary-token probes.

Source blocks beyond the target's depth and temporal weights the target has no
place for are skipped (logged). From a checkpoint of the same video model
(5-D `embedding/kernel`) every parameter but `output_projection` is copied.
Anything else that does not match raises `UnmatchedKeysError` listing the keys.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Set, Tuple

import ml_collections
import numpy as np
from absl import logging

from vivit_knn.weights import inflate
from vivit_knn.weights.image_vit import TIMESFORMER_EXTRAS
from vivit_knn.weights.load import load_checkpoint
from vivit_knn.weights.tree import Flat, flatten, raise_unmatched, unflatten

_NEW_TOP = ("output_projection", "TemporalTransformer", "cls_TemporalTransformer",
            "pre_logits")
_NEW_BLOCK_MODULES = ("summary_tokens",)
# Target block module -> the image block module it starts from.
_FROM_SPATIAL = {
    "LayerNorm_time": "LayerNorm_0", "LayerNorm_space": "LayerNorm_0",
    "MultiHeadDotProductAttention_time": "MultiHeadDotProductAttention_0",
    "MultiHeadDotProductAttention_space": "MultiHeadDotProductAttention_0",
    "LayerNorm_mlp": "LayerNorm_1", "MlpBlock": "MlpBlock_0",
    "temporal_norm1": "LayerNorm_0", "temporal_attn": "MultiHeadDotProductAttention_0",
}
_BLOCK_PATH = re.compile(r"^(encoderblock_(\d+))/([^/]+)/(.+)$")
_SRC_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/")
_IGNORED_SOURCE = re.compile(r"^(head|pre_logits)/")

NEW = None  # a rule for parameters kept at their initial value
ZEROS = ("", "zeros")  # a rule for parameters set to zero


def initialise_from(params: Any, config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """Returns `params` with the parts `config.init_from` provides replaced (numpy arrays).

  The result has the structure, shapes and dtypes of `params`. With an empty
  `init_from.checkpoint_path` `params` is returned unchanged. Call it right
  after a fresh init, not when resuming.
  """
  init = config.init_from
  if not init.checkpoint_path:
    return params
  source = load_checkpoint(init.checkpoint_path, init.checkpoint_format,
                           num_heads=config.model.num_heads)
  return initialise_from_tree(params, source, config)


def _grid(config: ml_collections.ConfigDict) -> Tuple[int, int]:
  ph, pw, _ = config.model.patch_size
  size = config.dataset.image_size
  return size // ph, size // pw


def initialise_from_tree(params: Any, source: Any,
                         config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """`initialise_from` with the checkpoint already read into a tree in our naming."""
  target, src = flatten(params), flatten(source)
  if "embedding/kernel" not in src:
    raise_unmatched("init_from", missing=["embedding/kernel"])
  if src["embedding/kernel"].ndim == 5:
    out = _from_video(target, src)
  else:
    out = _ImageMapper(target, src, config).run()
  return unflatten(out)


def _from_video(target: Flat, src: Flat) -> Flat:
  """Same-model checkpoint: copy everything but the classifier."""
  out, missing, bad = {}, [], []
  for path, value in target.items():
    if path.startswith("output_projection/"):
      out[path] = value
    elif path not in src:
      missing.append(path)
    elif src[path].shape != value.shape:
      bad.append(f"{path}: got {src[path].shape}, want {value.shape}")
    else:
      out[path] = src[path].astype(value.dtype)
  unknown = set(src) - set(target) - {p for p in src if p.startswith("output_projection/")}
  raise_unmatched("init_from (video checkpoint)", unknown, missing, bad)
  return out


class _ImageMapper:
  """Maps an image ViT tree onto one video model's fresh parameters."""

  def __init__(self, target: Flat, src: Flat, config: ml_collections.ConfigDict):
    self.target, self.src = target, src
    self.init = config.init_from
    self.grid = _grid(config)
    fe = config.model.name == "vivit" and config.model.model_type == "factorized_encoder"
    self.encoder = "SpatialTransformer" if fe else "Transformer"
    self.cls = "cls_SpatialTransformer" if fe else "cls"
    self.src_has_cls = "cls" in src

  def _rule(self, path: str) -> Optional[Tuple[str, str]]:
    """`(source path, transform)` for a target path; NEW to keep it; ('', '') if unknown."""
    top, _, rest = path.partition("/")
    if top in _NEW_TOP:
      return NEW
    if top == "embedding":
      return ("embedding/kernel", "kernel") if rest == "kernel" else (path, "copy")
    if top == self.cls:
      return ("cls", "copy")
    if top != self.encoder:
      return ("", "")
    if rest == "posembed_input/pos_embedding":
      if not self.init.restore_positional_embedding:
        return NEW
      return ("Transformer/posembed_input/pos_embedding", "posemb")
    if rest == "time_embed":
      return ("Transformer/time_embed", "time") if "Transformer/time_embed" in self.src else ZEROS
    if rest.startswith("encoder_norm/"):
      return (f"Transformer/{rest}", "copy")
    m = _BLOCK_PATH.match(rest)
    if not m:
      return ("", "")
    block, module, leaf = m.group(1), m.group(3), m.group(4)
    own = f"Transformer/{block}/{module}/{leaf}"
    if own in self.src:
      return (own, "copy")
    if module in _FROM_SPATIAL:
      return (f"Transformer/{block}/{_FROM_SPATIAL[module]}/{leaf}", "copy")
    if module == "temporal_fc":
      return ZEROS
    if module in _NEW_BLOCK_MODULES:
      return NEW
    return (own, "copy")

  def _transform(self, src_path: str, kind: str, value: np.ndarray) -> np.ndarray:
    x = self.src[src_path]
    if kind == "kernel" and value.ndim == 5:
      return inflate.inflate_kernel(x, value.shape[0], self.init.kernel_init_method)
    if kind == "posemb":
      return inflate.adapt_posemb(x, self.src_has_cls, value, self.grid,
                                  self.init.positional_embed_size_change)
    if kind == "time":
      return inflate.interpolate_time(x, value.shape[1])
    return x

  def _skippable(self, src_path: str, target_blocks: Set[int]) -> bool:
    if _IGNORED_SOURCE.match(src_path):
      return True
    if src_path == "cls":
      return self.cls not in self.target  # a GAP target has no CLS
    m = _SRC_BLOCK.match(src_path)
    if m and int(m.group(1)) not in target_blocks:
      return True
    return bool(TIMESFORMER_EXTRAS.match(src_path))

  def run(self) -> Flat:
    """Builds the new flat tree; raises UnmatchedKeysError on any mismatch."""
    out, used, missing, bad, new = {}, set(), [], [], []
    for path, value in self.target.items():
      rule = self._rule(path)
      if rule is NEW:
        out[path] = value
        new.append(path)
        continue
      if rule == ZEROS:
        out[path] = np.zeros_like(value)
        new.append(path)
        continue
      src_path, kind = rule
      if src_path not in self.src:
        missing.append(path + (f" (from {src_path})" if src_path else ""))
        continue
      result = self._transform(src_path, kind, value)
      used.add(src_path)
      if result.shape != value.shape:
        bad.append(f"{path} (from {src_path}): got {result.shape}, want {value.shape}")
        continue
      out[path] = result.astype(value.dtype)
    blocks = {int(m.group(2)) for m in (_BLOCK_PATH.match(p.partition("/")[2])
                                        for p in self.target if p.startswith(self.encoder + "/"))
              if m}
    unused = set(self.src) - used
    skipped = sorted(p for p in unused if self._skippable(p, blocks))
    raise_unmatched("init_from (image ViT)", unused - set(skipped), missing, bad)
    logging.info("init_from: restored %d arrays; kept %d as initialised (%s); skipped %d "
                 "checkpoint arrays (%s)", len(out) - len(new), len(new),
                 _summary(new), len(skipped), _summary(skipped))
    return out


def _summary(paths) -> str:
  tops = sorted({"/".join(p.split("/")[:2]) for p in paths})
  return ", ".join(tops[:12]) + (" ..." if len(tops) > 12 else "")
