"""The explain tool on the README's trained synthetic Dk-ViViT, and what its CLS query keeps."""

import json

import numpy as np
from PIL import Image

from tests.tiny import load_config, run_python
from tests.trained_synthetic import CONFIG, eval_top1, trained_dk  # noqa: F401
from vivit_knn.data.synthetic import CLASS_NAMES

NUM_CLIPS = 64


def _square_patches(clips, patch):
  """Per clip and tubelet time, which of the patches the bright square touches `[n, t, h*w]`."""
  ph, pw, pt = patch
  n, frames, height, width, _ = clips.shape
  square = (clips > 0.5).all(-1)  # the square is 1.0; the background stays below -0.5
  grid = square.reshape(n, frames // pt, pt, height // ph, ph, width // pw, pw)
  return grid.any(axis=(2, 4, 6)).reshape(n, frames // pt, -1).astype(float)


def test_cls_query_keeps_and_weighs_the_moving_square(trained_dk):  # noqa: F811
  """In the first spatial layer, the CLS query's kept keys carry its attention to the square.

  Control: the same attention scored against the square of another clip (an
  unrelated placement). The square touches about 21% of a frame's 16 patches, so
  chance is about 0.2 for both measures. Measured on this run: 77% of the CLS
  attention mass (all on kept keys) lies on the square's patches against 23% for
  the control, and the kept key with the largest weight is a square patch 93% of
  the time against 25%. (The kept set as a set is not enriched: the square's logit
  sits at one end of the ranking or the other, so with k = 2n/3 it is dropped
  about as often as other patches.)
  """
  from vivit_knn.data.registry import build_dataset
  from vivit_knn.models.registry import build_model
  from vivit_knn.tools.attention_stats import record_attention
  from vivit_knn.train.run_info import restore_params

  assert eval_top1(trained_dk) >= 0.9  # the model learned the task
  config = load_config("synthetic_dk")
  clips, _ = build_dataset(config.dataset).generate("eval", np.arange(NUM_CLIPS))
  params, _ = restore_params(trained_dk)
  _, layers = record_attention(build_model(config.model, 4), params, clips)
  name = "SpatialTransformer/encoderblock_0/MultiHeadDotProductAttention_0"
  rec = layers[name]
  on = _square_patches(clips, config.model.patch_size)  # [n, t, 16]
  control = np.roll(on, 1, axis=0)  # another clip's square
  n, t, s = on.shape
  heads = rec["weights"].shape[1]
  weights = rec["weights"].reshape(n, t, heads, s + 1, s + 1)[:, :, :, 0, 1:]
  kept = rec["kept"].reshape(n, t, heads, s + 1, s + 1)[:, :, :, 0, 1:]
  assert not np.any(weights[~kept])  # all the mass is on kept keys
  mass = (weights * on[:, :, None]).sum(-1).mean()
  mass_control = (weights * control[:, :, None]).sum(-1).mean()
  assert mass >= 2.0 * mass_control and mass >= 0.5, (mass, mass_control)
  top = weights.argmax(-1)[..., None]
  top_on = np.take_along_axis(np.repeat(on[:, :, None], heads, 2), top, -1).mean()
  top_control = np.take_along_axis(np.repeat(control[:, :, None], heads, 2), top, -1).mean()
  assert top_on >= 0.7 and top_on >= 2.0 * top_control, (top_on, top_control)


def _explain(workdir, *args):
  return run_python(["-m", "vivit_knn.tools.explain", f"--config={CONFIG}",
                     f"--workdir={workdir}", *args], check=False)


def test_explain_writes_png_gif_and_json_per_query(trained_dk, tmp_path):  # noqa: F811
  out = tmp_path / "explain"
  proc = _explain(trained_dk, "--index=3", "--query=cls", "--query=1,2,1", f"--output_dir={out}")
  assert proc.returncode == 0, proc.stderr
  truth = CLASS_NAMES[4][3 % 4]  # the synthetic eval set labels clip i with class i % 4
  assert f", true {truth}" in proc.stdout.splitlines()[0], proc.stdout
  # Whole kept-key counts (k = round(2/3 * 17) = 11), one rollout name per rollout row.
  assert "space: keeps 11/17" in proc.stdout and "11.0/17" not in proc.stdout
  rollouts = [line for line in proc.stdout.splitlines() if "rollout" in line]
  assert rollouts and all(line.count("rollout") == 1 for line in rollouts), proc.stdout
  for tag in ("cls", "q1_2_1"):
    png, gif, js = (out / f"eval3_{tag}.{ext}" for ext in ("png", "gif", "json"))
    for path in (png, gif, js):
      assert path.stat().st_size > 0 and str(path) in proc.stdout
    with Image.open(png) as image:
      assert image.size[0] > 300 and image.size[1] > 300
    with Image.open(gif) as image:
      assert image.n_frames == 8  # one per input frame
      assert min(image.size) >= 480, image.size
    data = json.loads(js.read_text())
    names = [layer["name"] for layer in data["layers"]]
    assert names[0] == "SpatialTransformer/encoderblock_0/MultiHeadDotProductAttention_0"
    assert any(layer["layout"].endswith("rollout") for layer in data["layers"])
    assert abs(sum(data["probabilities"].values()) - 1) < 1e-4
  data = json.loads((out / "eval3_cls.json").read_text())
  assert data["true_label"] == truth and data["input"] == "eval3"
  first = data["layers"][0]
  rows_w = np.asarray(first["query_rows"]["weights"])  # [frames, heads, 17]
  rows_k = np.asarray(first["query_rows"]["kept"])
  assert rows_w.shape == (4, 4, 17)
  np.testing.assert_allclose(rows_w.sum(-1), 1.0, atol=1e-4)
  assert np.all(rows_k.sum(-1) >= 11) and not np.any(rows_w[rows_k == 0])  # k = round(2/3 * 17)


def test_explain_rejects_a_layer_that_does_not_exist(trained_dk):  # noqa: F811
  proc = _explain(trained_dk, "--index=0", "--layers=0,9")
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "no attention layer '9'" in lines[0]
  assert "3=TemporalTransformer/encoderblock_1/MultiHeadDotProductAttention_0" in lines[0]
