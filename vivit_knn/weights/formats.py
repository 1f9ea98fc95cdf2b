"""Names of the checkpoint formats the config accepts (import-light: the config schema reads them).

`MODEL_FORMATS` are the `init_from.checkpoint_format` choices: sources of a
whole model (image ViT or a video model of ours / scenic's). The CAST experts
have their own fields and formats. `LOADABLE_FORMATS` is everything
`vivit_knn.weights.load.load_checkpoint` and the `convert` CLI read.
"""

MODEL_FORMATS = ("orbax", "vit_npz", "big_vision_npz", "timm", "scenic")
# The historical name of `MODEL_FORMATS`.
CHECKPOINT_FORMATS = MODEL_FORMATS
SPATIAL_EXPERT_FORMATS = ("clip", "orbax")
TEMPORAL_EXPERT_FORMATS = ("videomae", "orbax")
LOADABLE_FORMATS = MODEL_FORMATS + ("clip", "videomae")

POSEMB_SIZE_CHANGES = ("tile", "resize", "resize_tile")
KERNEL_INIT_METHODS = ("central_frame_initializer", "average_frame_initializer")
