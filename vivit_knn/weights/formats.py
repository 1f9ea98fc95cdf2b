"""Names accepted by `config.init_from` (kept import-light: the config schema reads them)."""

CHECKPOINT_FORMATS = ("orbax", "vit_npz", "big_vision_npz", "timm")
POSEMB_SIZE_CHANGES = ("tile", "resize", "resize_tile")
KERNEL_INIT_METHODS = ("central_frame_initializer", "average_frame_initializer")
