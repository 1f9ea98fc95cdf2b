"""Parameter count and GFLOPs of a model for one clip, without allocating or running it.

GFLOPs are multiply-adds, as in the papers: XLA's cost analysis of the jitted inference
forward (lowered and compiled, never run) halved, since XLA counts a multiply-add as 2 FLOPs;
its element-wise work (a fraction of a percent of a ViT) is left in. XLA counts a loop body
once, so the count uses attention's one-piece path (the same function); k-NN attention's
threshold search is itself a loop, whose comparisons are undercounted (`has_loops`).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from vivit_knn.models import attention
from vivit_knn.models.registry import build_model


def clip_shape(config: ml_collections.ConfigDict) -> tuple:
  """One clip's `(T, H, W, C)` from `config.dataset`."""
  d = config.dataset
  return (d.num_frames, d.image_size, d.image_size, 3)


def model_stats(model_config: ml_collections.ConfigDict, input_shape: Sequence[int],
                num_classes: int) -> Dict[str, Any]:
  """`params`, `gflops` (multiply-adds / 1e9), `xla_flops`, `has_loops` of a `(T, H, W, C)` clip."""
  model = build_model(model_config, num_classes)
  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape)))
  params = variables["params"]
  num_params = sum(math.prod(p.shape) for p in jax.tree.leaves(params))

  def forward(p, clip):
    return model.apply({"params": p}, clip, train=False)[0]

  with attention.one_piece_paths():  # the loop-free form, which XLA counts in full
    compiled = jax.jit(forward).lower(params, x).compile()
  flops = float(compiled.cost_analysis()["flops"])
  return {"params": num_params, "gflops": flops / 2 / 1e9, "xla_flops": flops,
          "has_loops": " while(" in compiled.as_text()}
