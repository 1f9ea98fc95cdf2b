"""FLOPs / params of the B/16 models land within 5% of the published figures (compile only)."""

import pytest

from tests.tiny import load_config, run_python
from vivit_knn.presets import vivit_b16x2
from vivit_knn.train.model_cost import clip_shape, model_stats


def _vivit(model_type):
  config = vivit_b16x2(model_type, knn_spatial=False, knn_temporal=False)
  config.model.spatial_transformer.num_layers = 12  # the paper's ViViT-B FE: Ls=12, Lt=4
  return config.model


def _image_vit():
  """ViT-B/16 on one 224^2 image = space-only TimeSformer on one frame."""
  config = load_config("k400_timesformer")
  config.model.attention_type = "space_only"
  return config.model


# (name, model config, clip, published GFLOPs, published params or None)
PUBLISHED = [
    ("ViT-B/16 image", _image_vit, (1, 224, 224, 3), 17.6, None),
    ("ViViT-B/16x2 unfactorised", lambda: _vivit("spacetime"), (32, 224, 224, 3), 455.0, None),
    ("ViViT-B/16x2 FE", lambda: _vivit("factorized_encoder"), (32, 224, 224, 3), 284.0, None),
    ("TimeSformer-B divided", lambda: load_config("k400_timesformer").model, (8, 224, 224, 3),
     196.0, 121.6e6),
    ("X-ViT-B", lambda: load_config("k400_xvit").model, (8, 224, 224, 3), 142.0, None),
]


@pytest.mark.parametrize("name, model, clip, gflops, params", PUBLISHED,
                         ids=[p[0] for p in PUBLISHED])
def test_published_figures_within_5_percent(name, model, clip, gflops, params):
  stats = model_stats(model(), clip, num_classes=400)
  print(f"{name}: {stats['gflops']:.1f} GFLOPs (published {gflops}), "
        f"{stats['params'] / 1e6:.2f} M params")
  assert not stats["has_loops"]
  assert stats["gflops"] == pytest.approx(gflops, rel=0.05)
  if params:
    assert stats["params"] == pytest.approx(params, rel=0.05)


def test_cli_prints_params_and_gflops_with_overrides():
  out = run_python(["-m", "vivit_knn.tools.model_stats", "--config=configs/k400_timesformer.py",
                    "--config.dataset.num_frames=4"]).stdout
  assert "clip: 4x224x224" in out and "classes: 400" in out
  assert "params: 121.56 M" in out  # 4 fewer time_embed rows (x 768) than at 8 frames
  gflops = float(out.split("GFLOPs (multiply-adds):")[1].split()[0])
  assert gflops == pytest.approx(196.5 / 2, rel=0.03)


def test_clip_shape_reads_the_dataset():
  assert clip_shape(load_config("k400_xvit")) == (8, 224, 224, 3)
