"""Initialises a fresh video model's parameters from a pretrained checkpoint (`config.init_from`).

From an image ViT tree, by the model family's `INIT_RULES`
(`vivit_knn.models.init_rules`): the patch kernel is inflated to 3D
(`init_from.kernel_init_method`); `cls`, the position embedding (patch rows
resized and tiled over time, `init_from.positional_embed_size_change`), blocks and
`encoder_norm` go to the family's image encoder; block modules that start from
spatial ones are copies of them (or the checkpoint's own, e.g. a converted
TimeSformer's `temporal_attn`); the time embedding and zeroed modules are the
checkpoint's or zeros; `output_projection` and the family's new modules keep their
initial values. From a checkpoint of the same video model (5-D `embedding/kernel`)
every parameter but `output_projection` is copied. Source blocks beyond the
target's depth, classifiers and temporal weights with no place are skipped (and
counted in the report); anything else that does not match raises `UnmatchedKeysError`.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Set, Tuple

import ml_collections
import numpy as np

from vivit_knn.models.init_rules import InitRules
from vivit_knn.models.registry import family
from vivit_knn.weights import inflate
from vivit_knn.weights.image_vit import TIMESFORMER_EXTRAS
from vivit_knn.weights.tree import Flat, flatten, raise_unmatched, unflatten

HEAD = "output_projection"
_BLOCK_PATH = re.compile(r"^(encoderblock_(\d+))/([^/]+)/(.+)$")
_SRC_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/")
_IGNORED_SOURCE = re.compile(r"^(head|pre_logits)/")

NEW = None  # a rule for parameters kept at their initial value
ZEROS = ("", "zeros")  # a rule for parameters set to zero

# What happened to each target parameter (the initialisation summary's columns).
RESTORED, INFLATED, COPIED, ZEROED, FRESH = "restored", "inflated", "copied", "zeroed", "fresh"
CATEGORIES = (RESTORED, INFLATED, COPIED, ZEROED, FRESH)
Report = Dict[str, str]


def initialise_with_report(params: Any, source: Any, config: ml_collections.ConfigDict
                           ) -> Tuple[Dict[str, Any], Report, List[str]]:
  """`(params with `source`'s parts placed in, {path: category}, skipped source paths)`."""
  target, src = flatten(params), flatten(source)
  if "embedding/kernel" not in src:
    raise_unmatched("init_from", missing=["embedding/kernel"])
  mapper = _VideoMapper if src["embedding/kernel"].ndim == 5 else _ImageMapper
  out, report, skipped = mapper(target, src, config).run()
  return unflatten(out), report, skipped


def _grid(config: ml_collections.ConfigDict) -> Tuple[int, int]:
  ph, pw, _ = config.model.patch_size
  size = config.dataset.image_size
  return size // ph, size // pw


def _head_rule(init: ml_collections.ConfigDict, src: Flat, path: str, value: np.ndarray,
               candidates: Tuple[str, ...]) -> Optional[Tuple[str, str]]:
  """The classifier: kept fresh, or with `init_from.restore_head` the source's own head."""
  if not init.restore_head:
    return NEW
  leaf = path.partition("/")[2]
  for top in candidates:
    found = src.get(f"{top}/{leaf}")
    if found is None:
      continue
    if found.shape != value.shape:
      raise ValueError(
          f"init_from.restore_head: the checkpoint's classifier {top}/{leaf} has shape "
          f"{found.shape} but the model's {path} is {value.shape} (the class counts differ: "
          f"{found.shape[-1]} vs {value.shape[-1]}); set init_from.restore_head=False to "
          "train a new head")
    return (f"{top}/{leaf}", "copy")
  raise ValueError(f"init_from.restore_head: the checkpoint has no classifier "
                   f"({' or '.join(candidates)}) to restore into {path}")


class _VideoMapper:
  """A checkpoint of a video model with our names (scenic, or a run of this project).

  Copied by name; position embeddings of another time length are interpolated
  over time; source blocks deeper than the target are skipped and reported.
  """

  def __init__(self, target: Flat, src: Flat, config: ml_collections.ConfigDict):
    self.target, self.src, self.init, self.grid = target, src, config.init_from, _grid(config)
    self.time_encoders = dict(family(config.model.name).init_rules.time_encoders)

  def _posemb(self, path: str, value: np.ndarray) -> Optional[np.ndarray]:
    """The source position embedding interpolated over time, or None when it cannot fit.

    Rows are `[CLS] + time x per_time`, `per_time` the patch grid (one row per
    time step in the family's time encoders).
    """
    x = self.src[path]
    if x.ndim != 3 or x.shape[-1] != value.shape[-1]:
      return None
    h, w = self.grid
    top = path.partition("/")[0]
    if top in self.time_encoders:
      per_time, cls = 1, int(self.time_encoders[top] in self.target)
    else:
      per_time = h * w
      cls = value.shape[1] % per_time
    rows, want = x.shape[1] - cls, value.shape[1] - cls
    if cls not in (0, 1) or rows % per_time or want % per_time or min(rows, want) <= 0:
      return None
    d = x.shape[-1]
    moved = inflate.interpolate_time(x[:, cls:].reshape(1, rows // per_time, per_time * d),
                                     want // per_time).reshape(1, want, d)
    return np.concatenate([x[:, :cls], moved], axis=1).astype(value.dtype)

  def run(self) -> Tuple[Flat, Report, List[str]]:
    """`(new flat tree, report, skipped source paths)`; UnmatchedKeysError on a mismatch."""
    out, report, missing, bad, used = {}, {}, [], [], set()
    for path, value in self.target.items():
      rule = (_head_rule(self.init, self.src, path, value, (HEAD, "head"))
              if path.startswith(HEAD + "/") else (path, "copy"))
      if rule is NEW:
        out[path], report[path] = value, FRESH
        continue
      src_path = rule[0]
      if src_path not in self.src:
        missing.append(path)
        continue
      used.add(src_path)
      x = self.src[src_path]
      category = RESTORED
      if x.shape != value.shape and path.endswith("posembed_input/pos_embedding"):
        x, category = self._posemb(path, value), INFLATED
      if x is None or x.shape != value.shape:
        bad.append(f"{path}: got {self.src[src_path].shape}, want {value.shape}")
        continue
      out[path], report[path] = x.astype(value.dtype), category
    target_blocks = {_block_key(p) for p in self.target} - {None}
    skipped = sorted(p for p in set(self.src) - used
                     if p.startswith((HEAD + "/", "head/", "pre_logits/"))
                     or (_block_key(p) is not None and _block_key(p) not in target_blocks))
    unknown = set(self.src) - used - set(skipped)
    raise_unmatched("init_from (video checkpoint)", unknown, missing, bad,
                    {"checkpoint": self.src, "model": self.target})
    return out, report, skipped


_ANY_BLOCK = re.compile(r"^(.*?encoderblock_\d+)/")


def _block_key(path: str) -> Optional[str]:
  m = _ANY_BLOCK.match(path)
  return m.group(1) if m else None


class _ImageMapper:
  """Maps an image ViT tree onto one video model's fresh parameters."""

  def __init__(self, target: Flat, src: Flat, config: ml_collections.ConfigDict):
    self.target, self.src, self.init, self.grid = target, src, config.init_from, _grid(config)
    self.rules: InitRules = family(config.model.name).init_rules
    self.encoder, self.cls = self.rules.image_encoder(config.model)
    self.from_spatial = dict(self.rules.from_spatial)
    self.src_has_cls = "cls" in src

  def _rule(self, path: str) -> Optional[Tuple[str, str]]:
    """`(source path, transform)` for a target path; NEW to keep it; ('', '') if unknown."""
    top, _, rest = path.partition("/")
    if top == HEAD:
      return _head_rule(self.init, self.src, path, self.target[path], ("head",))
    if any(re.fullmatch(pattern, top) for pattern in self.rules.new_modules):
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
    if self.rules.time_embedding and rest == self.rules.time_embedding:
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
    if module in self.from_spatial:
      return (f"Transformer/{block}/{self.from_spatial[module]}/{leaf}", "from_spatial")
    if module in self.rules.zeroed_block_modules:
      return ZEROS
    if module in self.rules.new_block_modules:
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

  def run(self) -> Tuple[Flat, Report, List[str]]:
    """`(new flat tree, report, skipped source paths)`; UnmatchedKeysError on a mismatch."""
    out, report, used, missing, bad = {}, {}, set(), [], []
    for path, value in self.target.items():
      rule = self._rule(path)
      if rule is NEW:
        out[path], report[path] = value, FRESH
        continue
      if rule == ZEROS:
        out[path], report[path] = np.zeros_like(value), ZEROED
        continue
      src_path, kind = rule
      note = f" (from {src_path})" if src_path not in ("", path) else ""
      if src_path not in self.src:
        missing.append(path + note)
        continue
      result = self._transform(src_path, kind, value)
      used.add(src_path)
      if result.shape != value.shape:
        bad.append(f"{path}{note}: got {result.shape}, want {value.shape}")
        continue
      out[path] = result.astype(value.dtype)
      report[path] = self._category(src_path, kind, result)
    blocks = {int(m.group(2)) for m in (_BLOCK_PATH.match(p.partition("/")[2])
                                        for p in self.target if p.startswith(self.encoder + "/"))
              if m}
    unused = set(self.src) - used
    skipped = sorted(p for p in unused if self._skippable(p, blocks))
    raise_unmatched("init_from (image ViT)", unused - set(skipped), missing, bad,
                    {"checkpoint": self.src, "model": self.target})
    return out, report, skipped

  def _category(self, src_path: str, kind: str, result: np.ndarray) -> str:
    if kind == "from_spatial":
      return COPIED
    if kind in ("kernel", "posemb", "time") and (
        result.shape != self.src[src_path].shape or not np.array_equal(result, self.src[src_path])):
      return INFLATED
    return RESTORED
