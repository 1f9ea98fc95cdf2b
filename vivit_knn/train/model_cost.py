"""Parameter count and GFLOPs of a model for one clip, without allocating or running it.

GFLOPs follow the papers' convention: multiply-adds (one multiply plus one add =
one FLOP). They are XLA's cost analysis of the jitted inference forward on one
clip, divided by 2: XLA counts a multiply-add of a dot or convolution as 2
FLOPs, and also counts element-wise work (softmax, LayerNorm, GELU, residual
adds) at 1 FLOP per element, which is a fraction of a percent of a ViT's total
and is left in. Parameters are `jax.eval_shape` structures and the forward is
only lowered and compiled, never run.

XLA's cost analysis counts the body of a loop once, whatever its trip count.
The CPU path of `dot_product_attention` evaluates attention in a loop over
blocks of heads (it is faster), so the count is taken with the one-piece path,
which computes the same function. k-NN attention's threshold search is itself
a loop of comparisons; for k-NN models the count covers the matmuls and
softmax but undercounts those comparisons (`has_loops` says so).
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


def _cost_flops(cost: Any) -> float:
  if isinstance(cost, (list, tuple)):  # older jax returned one dict per device
    cost = cost[0]
  return float(cost["flops"])


def model_stats(model_config: ml_collections.ConfigDict, input_shape: Sequence[int],
                num_classes: int) -> Dict[str, Any]:
  """Parameter count and GFLOPs of one inference forward.

  Args:
    model_config: `config.model`.
    input_shape: one clip's `(T, H, W, C)`.
    num_classes: the classifier's width.

  Returns:
    `params`, `gflops` (multiply-adds / 1e9), `xla_flops` and `has_loops`.
  """
  model = build_model(model_config, num_classes)
  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape)))
  params = variables["params"]
  num_params = sum(math.prod(p.shape) for p in jax.tree.leaves(params))

  def forward(p, clip):
    return model.apply({"params": p}, clip, train=False)[0]

  with attention.one_piece_paths():  # the loop-free form, which XLA counts in full
    compiled = jax.jit(forward).lower(params, x).compile()
  flops = _cost_flops(compiled.cost_analysis())
  return {"params": num_params, "gflops": flops / 2 / 1e9, "xla_flops": flops,
          "has_loops": " while(" in compiled.as_text()}
