"""Checkpoint format names the config accepts (import-light: the config schema reads them).

`MODEL_FORMATS`: `init_from.checkpoint_format` (a whole model); `LOADABLE_FORMATS`: all formats.
"""

MODEL_FORMATS = ("orbax", "vit_npz", "big_vision_npz", "timm", "scenic")
SPATIAL_EXPERT_FORMATS = ("clip", "orbax")
TEMPORAL_EXPERT_FORMATS = ("videomae", "orbax")
LOADABLE_FORMATS = MODEL_FORMATS + ("clip", "videomae")

POSEMB_SIZE_CHANGES = ("tile", "resize", "resize_tile")
KERNEL_INIT_METHODS = ("central_frame_initializer", "average_frame_initializer")
