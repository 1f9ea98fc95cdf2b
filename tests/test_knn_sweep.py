"""knn_sweep on the README's trained synthetic Dk-ViViT: k at eval time and top-k mass."""

import json

import numpy as np

from tests.tiny import run_python
from tests.trained_synthetic import CONFIG, eval_top1, trained_dk  # noqa: F401


def _sweep(workdir, *args):
  return run_python(["-m", "vivit_knn.tools.knn_sweep", f"--config={CONFIG}",
                     f"--workdir={workdir}", *args], check=False)


def test_sweep_table_k1_matches_dense_and_mass_is_monotone(trained_dk, tmp_path):  # noqa: F811
  out = tmp_path / "sweep" / "all_k0.5-1.0"
  proc = _sweep(trained_dk, "--k=0.5,1.0", "--mass_examples=16", f"--output_dir={out.parent}")
  assert proc.returncode == 0, proc.stderr
  for name in ("sweep.csv", "sweep.json", "mass.csv", "sweep.png"):
    assert (out / name).stat().st_size > 0 and str(out / name) in proc.stdout
  result = json.loads((out / "sweep.json").read_text())
  rows = {r["name"]: r for r in result["rows"]}
  assert set(rows) == {"trained", "knn k=0.5", "knn k=1.0", "dense"}
  # The trained config is the run's own: the sweep reproduces its final evaluation.
  assert rows["trained"]["top1"] == eval_top1(trained_dk)
  assert rows["knn k=1.0"]["top1"] == rows["dense"]["top1"]
  assert abs(rows["knn k=1.0"]["loss"] - rows["dense"]["loss"]) < 1e-5
  assert set(result["fields"]) == {"model.spatial_transformer.attention",
                                   "model.temporal_transformer.attention"}
  assert len(result["mass"]) == 4
  for layer, m in result["mass"].items():
    shares = [m["share"][k] for k in ("0.5", "1.0")]
    assert abs(shares[-1] - 1.0) < 1e-5, layer  # all n keys hold all the mass
    assert shares[0] < shares[1], layer
    curve = np.asarray(m["curve"])
    assert len(curve) == m["num_keys"] and np.all(np.diff(curve) >= -1e-7)
    assert curve[0] >= 1.0 / m["num_keys"] - 1e-6  # the largest weight is at least the mean


def test_k_out_of_range_is_one_line(trained_dk):  # noqa: F811
  proc = _sweep(trained_dk, "--k=0.5,40")
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert "--k=40 does not fit model.spatial_transformer.attention (17 keys)" in lines[0]


def test_one_block_sweep_keeps_its_own_files_and_measures_mass_all_dense(trained_dk,  # noqa: F811
                                                                         tmp_path):
  """Mass 'with every attention dense' under --fields=<block> is the all-fields sweep's mass."""
  block = "model.spatial_transformer.attention"
  first = _sweep(trained_dk, "--k=0.5,1.0", "--mass_examples=8", f"--output_dir={tmp_path}")
  second = _sweep(trained_dk, "--k=0.5,1.0", "--mass_examples=8", f"--output_dir={tmp_path}",
                  f"--fields={block}")
  named = _sweep(trained_dk, "--k=1.0", "--mass_examples=8", f"--output_dir={tmp_path}",
                 f"--fields={block}", "--name=mine")
  for proc in (first, second, named):
    assert proc.returncode == 0, proc.stderr
    assert "with every attention dense" in proc.stdout
  folders = {"all_k0.5-1.0", "spatial_transformer_k0.5-1.0", "mine"}
  assert {p.name for p in tmp_path.iterdir()} == folders
  for folder in folders:
    for name in ("sweep.csv", "sweep.json", "mass.csv", "sweep.png"):
      assert (tmp_path / folder / name).stat().st_size > 0
  every, one = (json.loads((tmp_path / f / "sweep.json").read_text())
                for f in ("all_k0.5-1.0", "spatial_transformer_k0.5-1.0"))
  assert list(one["fields"]) == [block] and len(every["fields"]) == 2
  # The temporal layers are k-NN in the trained run: measured as trained, their top-k
  # curves would reach 1 at k = 2n/3 keys.
  assert one["mass"].keys() == every["mass"].keys() and len(one["mass"]) == 4
  for layer, m in every["mass"].items():
    np.testing.assert_allclose(one["mass"][layer]["curve"], m["curve"], atol=1e-6)
    assert m["curve"][-2] < 1 - 1e-4, layer  # dense: the smallest weight holds some mass
  rows = {r["name"]: r for r in one["rows"]}
  assert rows["knn k=1.0"]["top1"] == rows["dense"]["top1"]


def test_sweep_plot_draws_accuracy_axes_up_to_1():
  from vivit_knn.tools.attention_plots import sweep_figure
  result = {"fields": {"f": 17}, "rows": [
      {"name": "trained", "k": None, "top1": 1.0}, {"name": "knn k=0.5", "k": 0.5, "top1": 0.98},
      {"name": "knn k=1.0", "k": 1.0, "top1": 1.0}, {"name": "dense", "k": None, "top1": 1.0}],
      "mass": {"layer": {"num_keys": 4, "curve": [0.7, 0.9, 1.0, 1.0]}}}
  fig = sweep_figure(result)
  assert [ax.get_ylim()[1] for ax in fig.axes] == [1, 1]
