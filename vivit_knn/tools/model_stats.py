r"""Parameter count and GFLOPs of the model a config describes, for one clip.

    python -m vivit_knn.tools.model_stats --config=configs/ucf101_uk.py \
        --config.dataset.num_frames=32 --num_classes=400
    python -m vivit_knn.tools.model_stats --table     # README's cost table, from the checkout

The config gets `main`'s checks (`vivit_knn.config.validate`) but those that checkpoint
files are given; no dataset is opened. Counted by `vivit_knn.train.model_cost`.
"""

from __future__ import annotations

from typing import List, Sequence

from absl import app, flags
from ml_collections import ConfigDict, config_flags

from vivit_knn import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", None, "Classifier width (default: the config's dataset's class count).")
_TABLE = flags.DEFINE_bool("table", False, "Print the README's cost table (reads ./configs).")

# The README's table: (row, config file, overrides, published GFLOPs, published params).
TABLE_ROWS = (
    ("ViT-B/16 image (1x224²)", "k400_timesformer",
     {"model.attention_type": "space_only", "dataset.num_frames": 1}, "17.6", "86 M"),
    ("ViViT-B/16x2 unfactorised (32x224²)", "ucf101_vivit_st", {"dataset.num_frames": 32},
     "455", ""),
    ("ViViT-B/16x2 factorised encoder, Ls=12, Lt=4 (32x224²)", "ucf101_vivit_fe",
     {"dataset.num_frames": 32, "model.spatial_transformer.num_layers": 12}, "284", ""),
    ("TimeSformer-B divided (8x224²)", "k400_timesformer", {}, "196", "121.6 M"),
    ("X-ViT-B, div 8 (8x224²)", "k400_xvit", {}, "142 (= 8 x 17.6)", ""),
)


def dataset_classes(config: ConfigDict) -> int:
  """The class count of `config.dataset`, from the config (UCF101/HMDB51: their own)."""
  if config.dataset.name in ("ucf101", "hmdb51"):
    from vivit_knn.data import named  # pylint: disable=g-import-not-at-top
    return getattr(named, config.dataset.name.upper()).num_classes
  return config.dataset.num_classes


def check_config(config: ConfigDict) -> None:
  """`vivit_knn.config.validate`, less the checks that checkpoint files are given."""
  from vivit_knn import config as config_lib  # pylint: disable=g-import-not-at-top
  probe = ConfigDict(config.to_dict())
  probe.init_from.required, probe.distill.stage1.checkpoint_format = False, "none"
  probe.distill.stage2.update({k: v or "-" for k, v in probe.distill.stage2.items()})
  config_lib.validate(probe)


def _stats(config: ConfigDict, num_classes: int):
  from vivit_knn.train import model_cost  # pylint: disable=g-import-not-at-top
  check_config(config)
  shape = model_cost.clip_shape(config)
  return shape, model_cost.model_stats(config.model, shape, num_classes)


def describe(config: ConfigDict, num_classes: int = None) -> List[str]:
  """The lines model_stats prints of `config`'s model: clip, classes, params, GFLOPs."""
  num_classes = num_classes or dataset_classes(config)
  if num_classes < 1:
    raise ValueError(f"config.dataset.num_classes must be at least 1, got {num_classes} "
                     "(or pass --num_classes)")
  (t, h, w, _), stats = _stats(config, num_classes)
  cast = config.model.cast
  classes = (f"{cast.num_verbs} verbs x {cast.num_nouns} nouns"
             if config.model.name == "cast" and cast.num_verbs > 0 else num_classes)
  return [f"model: {config.model.name}  clip: {t}x{h}x{w}  classes: {classes}",
          f"params: {stats['params']:,} ({stats['params'] / 1e6:.2f} M)",
          f"GFLOPs (multiply-adds): {stats['gflops']:.4g}"] + [
              "note: the forward contains loops (k-NN threshold search); XLA counts a loop "
              "body once, so those comparisons are undercounted"] * stats["has_loops"]


def table() -> str:
  """The README's markdown table of `TABLE_ROWS`: measured and published GFLOPs and params."""
  from vivit_knn.train.distill import load_config_file  # pylint: disable=g-import-not-at-top
  lines = ["| model (clip) | measured GFLOPs | published | measured params (400-class head) "
           "| published |", "|---|---|---|---|---|"]
  for row, name, overrides, gflops, params in TABLE_ROWS:
    config = load_config_file(f"configs/{name}.py")
    config.update_from_flattened_dict(overrides)
    stats = _stats(config, 400)[1]
    lines.append(f"| {row} | {stats['gflops']:.1f} | {gflops} | {stats['params'] / 1e6:.1f} M "
                 f"| {params} |")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  """Prints the stats of `--config`'s model, or with `--table` the README's table."""
  del argv  # `cli.run` refuses stray arguments
  if not _TABLE.value and _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/synthetic_dk.py")
  if _NUM_CLASSES.value is not None and _NUM_CLASSES.value < 1:
    raise ValueError(f"--num_classes must be at least 1, got {_NUM_CLASSES.value}")
  print(table() if _TABLE.value else "\n".join(describe(_CONFIG.value, _NUM_CLASSES.value)))


if __name__ == "__main__":
  cli.run(main)
