r"""Parameter count and GFLOPs of the model a config describes, for one clip.

    python -m vivit_knn.tools.model_stats --config=configs/k400_timesformer.py
    python -m vivit_knn.tools.model_stats --config=configs/ucf101_uk.py \
        --config.dataset.num_frames=32 --num_classes=400

How they are counted: `vivit_knn.train.model_cost`.
"""

from __future__ import annotations

from typing import Sequence

from absl import app, flags
from ml_collections import config_flags

from vivit_knn import cli
from vivit_knn.train.model_cost import clip_shape, model_stats

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", None, "Classifier width (default: config.dataset.num_classes).")


def main(argv: Sequence[str]) -> None:
  """Prints the stats of `--config`'s model."""
  del argv  # `cli.run` refuses stray arguments
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/synthetic_dk.py")
  if _NUM_CLASSES.value is not None and _NUM_CLASSES.value < 1:
    raise ValueError(f"--num_classes must be at least 1, got {_NUM_CLASSES.value}")
  num_classes = _NUM_CLASSES.value or config.dataset.num_classes
  if num_classes < 1:
    raise ValueError(f"config.dataset.num_classes must be at least 1, got {num_classes} "
                     "(or pass --num_classes)")
  shape = clip_shape(config)
  stats = model_stats(config.model, shape, num_classes)
  print(f"model: {config.model.name}  clip: {shape[0]}x{shape[1]}x{shape[2]}  "
        f"classes: {num_classes}")
  print(f"params: {stats['params'] / 1e6:.2f} M")
  print(f"GFLOPs (multiply-adds): {stats['gflops']:.1f}")
  if stats["has_loops"]:
    print("note: the forward contains loops (k-NN threshold search); XLA counts a loop "
          "body once, so those comparisons are undercounted")


if __name__ == "__main__":
  cli.run(main)
