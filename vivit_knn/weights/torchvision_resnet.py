"""torchvision ResNet state dicts -> `vivit_knn.models.resnet.ResNet` variables (float32 numpy).

`layerX.j.<module>` becomes `layerX_j/<module>` (`downsample.0` / `.1`:
`downsample_conv` / `downsample_bn`); conv weights `[O, I, kh, kw]` become kernels
`[kh, kw, I, O]`; a BatchNorm's `weight` / `bias` go to `params` as `scale` / `bias`,
its `running_mean` / `running_var` to `batch_stats` as `mean` / `var`; `fc` is a
Dense. `num_batches_tracked` counters are dropped.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from vivit_knn.models.resnet import DEPTHS
from vivit_knn.weights import npz
from vivit_knn.weights.state_dict import read_state_dict, unwrap
from vivit_knn.weights.tree import Flat, raise_unmatched, unflatten

_BN = {"weight": ("params", "scale"), "bias": ("params", "bias"),
       "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")
_MODULE = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}


def _target(name: str) -> Tuple[str, str]:
  """`(collection, flax path)` of one torchvision key, or raises KeyError."""
  prefix, rest = "", name
  match = _BLOCK.match(name)
  if match:
    stage, index, rest = match.groups()
    prefix = f"layer{stage}_{index}/"
  module, _, leaf = rest.rpartition(".")
  module = _MODULE.get(module, module)
  is_norm = module.startswith("bn") or module == "downsample_bn"
  is_conv = module.startswith("conv") or module == "downsample_conv"
  if is_norm and leaf in _BN:
    collection, ours = _BN[leaf]
    return collection, f"{prefix}{module}/{ours}"
  if is_conv and leaf == "weight":
    return "params", f"{prefix}{module}/kernel"
  if not prefix and module == "fc" and leaf in ("weight", "bias"):
    return "params", f"fc/{'kernel' if leaf == 'weight' else 'bias'}"
  raise KeyError(name)


def _to_flax(name: str, value: np.ndarray) -> np.ndarray:
  value = np.asarray(value, np.float32)
  if value.ndim == 4:  # conv [O, I, kh, kw] -> [kh, kw, I, O]
    return value.transpose(2, 3, 1, 0)
  if name.endswith("fc.weight"):
    return value.T
  return value


def convert_torchvision_resnet(state: Mapping[str, Any]) -> Dict[str, Any]:
  """Maps a torchvision ResNet state dict to `{'params': ..., 'batch_stats': ...}`."""
  out: Dict[str, Flat] = {"params": {}, "batch_stats": {}}
  unknown = []
  for name, value in state.items():
    if name.endswith("num_batches_tracked"):
      continue
    try:
      collection, path = _target(name)
    except KeyError:
      unknown.append(name)
      continue
    out[collection][path] = _to_flax(name, np.asarray(value))
  raise_unmatched("torchvision ResNet state dict", unknown=unknown)
  return {k: unflatten(v) for k, v in out.items()}


def infer_depth(state: Mapping[str, Any]) -> int:
  """The ResNet depth whose block counts (and block kind) match the state dict's keys."""
  counts = [0, 0, 0, 0]
  bottleneck = False
  for name in state:
    match = _BLOCK.match(name)
    if match:
      stage, index = int(match.group(1)), int(match.group(2))
      counts[stage - 1] = max(counts[stage - 1], index + 1)
      bottleneck |= match.group(3).startswith("conv3.")
  kind = "bottleneck" if bottleneck else "basic"
  for depth, (k, blocks) in DEPTHS.items():
    if k == kind and tuple(counts) == blocks:
      return depth
  raise ValueError(f"state dict has {kind} blocks {tuple(counts)} per stage: not a torchvision "
                   f"ResNet of depth {sorted(DEPTHS)}")


def load_state_dict(path: str) -> Flat:
  """Reads a torchvision state dict: `.pth`/`.pt` (needs torch), `.safetensors` or `.npz`."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"ResNet checkpoint {path} does not exist")
  if path.endswith(".npz"):
    return npz.load_npz(path)
  return read_state_dict(path, "a torchvision ResNet checkpoint")


def load_torchvision_resnet(path: str) -> Tuple[Dict[str, Any], int]:
  """`(variables, depth)` of the torchvision ResNet checkpoint at `path`."""
  state = unwrap(load_state_dict(path))
  return convert_torchvision_resnet(state), infer_depth(state)
