"""CAST-B/16 on Kinetics-400, 16x224x224: the paper's recipe.

Experts: CLIP ViT-B/16 (spatial, frames 1, 3, ..., 15) and VideoMAE ViT-B
(temporal, 2x16x16 tubelets), both frozen; B-CAST blocks, adapters, ln_post,
fc_norm and the head train (about 45M parameters). Their weights come from
`vivit_knn.weights.clip.convert_clip` / `vivit_knn.weights.videomae.convert_videomae`
placed with `vivit_knn.models.cast.merge_expert_params`.
Data: DMVR-format TFRecords (`--config.dataset.data_dir=<dir>`), 16 frames every 4,
ImageNet mean/std as in the public code. Optimiser: AdamW, lr 1e-3 per 256 clips,
weight decay 0.05, layer decay 0.75, 5 warmup epochs of 70, drop path 0.2,
label smoothing 0.1, mixup 0.8 (the trainer mixes every batch; the paper did half).
"""

from vivit_knn.presets import cast_b16

K400_TRAIN_SIZE = 234_584  # the paper's videos still online; adjust to your copy


def get_config():
  """CAST-B/16 (12 layers, B-CAST width 384, adapters 192) with one 400-way head."""
  return cast_b16("k400_cast", num_train=K400_TRAIN_SIZE, num_classes=400, epochs=70,
                  stochastic_depth=0.2, frame_stride=4, num_test_clips=5)
