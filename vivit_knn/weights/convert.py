"""Converts a public ViT checkpoint to an Orbax checkpoint of our image ViT tree.

    python -m vivit_knn.weights.convert --from=ViT-B_16.npz --format=vit_npz \\
        --to=vit_b16.orbax

The result is a valid `init_from` source (`--config.init_from.checkpoint_path=
vit_b16.orbax`, format 'orbax'). Formats: 'vit_npz' (original ViT),
'big_vision_npz', 'timm' (a PyTorch state dict; needs torch; `--num_heads` if
the width is not a standard ViT's).
"""

from __future__ import annotations

from typing import Sequence

from absl import app, flags

from vivit_knn.weights import load
from vivit_knn.weights.image_vit import infer_arch

_FROM = flags.DEFINE_string("from", None, "Checkpoint file to convert.", required=True)
_FORMAT = flags.DEFINE_enum("format", None, ["vit_npz", "big_vision_npz", "timm"],
                            "Format of --from.", required=True)
_TO = flags.DEFINE_string("to", None, "Output Orbax checkpoint directory.", required=True)
_NUM_HEADS = flags.DEFINE_integer("num_heads", None, "Heads (timm only; default from width).")


def main(argv: Sequence[str]) -> None:
  """Converts --from to --to and prints the architecture read from the weights."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  tree = load.load_checkpoint(_FROM.value, _FORMAT.value, num_heads=_NUM_HEADS.value)
  path = load.save_orbax(_TO.value, tree)
  print(f"wrote {path}: {infer_arch(tree)}")


if __name__ == "__main__":
  app.run(main)
