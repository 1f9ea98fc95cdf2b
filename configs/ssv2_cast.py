"""CAST-B/16 on Something-Something v2, 16x224x224: the paper's recipe.

As `k400_cast.py` (frozen CLIP + VideoMAE experts, about 45M trainable
parameters) with SSv2's schedule: 50 epochs, drop path 0.3, 2 clips x 3 crops at
test time. Frames are sampled as VideoMAE samples SSv2 (`frame_sampling='segments'`):
the video is split into 16 equal segments and each gives one frame, a random one in
training and the segment middles (clip 1) and starts (clip 2) at test time.
"""

from vivit_knn.presets import cast_b16

SSV2_TRAIN_SIZE = 168_913
SSV2_CLASSES = 174


def get_config():
  """CAST-B/16 (12 layers, B-CAST width 384, adapters 192) with one 174-way head."""
  config = cast_b16("ssv2_cast", num_train=SSV2_TRAIN_SIZE, num_classes=SSV2_CLASSES,
                    epochs=50, stochastic_depth=0.3, frame_stride=1, num_test_clips=2)
  config.dataset.frame_sampling = "segments"
  config.dataset.random_flip = False  # left/right matter in SSv2's labels
  return config
