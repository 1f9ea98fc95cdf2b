"""The benchmark scripts: HLO collective counting, the train step's collectives, the device suite.

The collectives are counted on a forced 8-device CPU mesh; the device suite runs
its `--smoke` shapes on CPU (the kernel column through the Pallas interpreter).
"""

import json
import math

import numpy as np
import pytest

from benchmarks import collectives
from tests.tiny import run_python

# Hand-written HLO in the compiled-text format: a combined (tuple) all-reduce, a
# synchronous all-gather, a reduce-scatter whose operand is sized by its definition,
# an asynchronous all-gather (counted at -start, not at -done), a collective-permute
# start with scratch scalars, and an instruction that only mentions a collective name.
_HLO = """
HloModule jit_step, entry_computation_layout={(f32[32,64]{1,0})->f32[4,64]{1,0}}

ENTRY %main.1 (p0: f32[32,64]) -> f32[4,64] {
  %p0 = f32[32,64]{1,0} parameter(0)
  %x = bf16[3,5]{1,0} parameter(1)
  %all-reduce.7 = (f32[32,64]{1,0}, bf16[3,5]{1,0}) all-reduce(%p0, %x), channel_id=2, \
replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_0'}, to_apply=%add
  %all-gather = f32[16,4]{1,0} all-gather(%y), channel_id=1, dimensions={0}
  %rs = f32[4,64]{1,0} reduce-scatter(%p0), channel_id=3, dimensions={0}, to_apply=%add
  %ags = ((f32[4,64]{1,0}), f32[32,64]{1,0}) all-gather-start(%rs), dimensions={0}
  %agd = f32[32,64]{1,0} all-gather-done(%ags)
  %cps = (s8[10]{0}, s8[10]{0}, u32[], u32[]) collective-permute-start(%z)
  %cpd = s8[10]{0} collective-permute-done(%cps)
  ROOT %copy = f32[4,64]{1,0} copy(%rs), metadata={op_name="all-reduce"}
}
"""


def _nbytes(dtype, *shape):
  return int(np.prod(shape)) * np.dtype(dtype).itemsize


def test_count_collectives_sizes_every_kind_from_hlo_text():
  found = collectives.count_collectives(_HLO)
  assert [(c.kind, c.name) for c in found] == [
      ("all-reduce", "all-reduce.7"), ("all-gather", "all-gather"), ("reduce-scatter", "rs"),
      ("all-gather", "ags"), ("collective-permute", "cps")]
  bf16_bytes = 3 * 5 * 2
  assert [c.bytes for c in found] == [
      _nbytes(np.float32, 32, 64) + bf16_bytes, _nbytes(np.float32, 16, 4),
      _nbytes(np.float32, 32, 64), _nbytes(np.float32, 32, 64), _nbytes(np.int8, 10)]
  table = collectives.summarize(found)
  assert table["all-gather"] == {"count": 2, "bytes": _nbytes(np.float32, 16, 4)
                                 + _nbytes(np.float32, 32, 64)}
  assert table["all-to-all"] == {"count": 0, "bytes": 0}


@pytest.fixture(scope="module")
def step_collectives():
  """Collectives of synthetic_tiny's train step on 8 forced CPU devices, data and FSDP meshes."""
  proc = run_python(["benchmarks/train_step.py", "--config=configs/synthetic_tiny.py",
                     "--config.mesh.fsdp_min_param_size=64", "--collectives=8",
                     "--collective_meshes=data,fsdp", "--json"],
                    {"JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"})
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_data_parallel_step_all_reduces_the_gradients_once(step_collectives):
  assert step_collectives["devices"] == 8
  r = step_collectives["data"]
  assert r["mesh"] == [8, 1, 1]
  kinds = r["kinds"]
  # One gradient all-reduce of the parameter bytes, plus a few metric scalars.
  ratio = kinds["all-reduce"]["bytes"] / r["param_bytes"]
  assert 1.0 <= ratio <= 1.01, ratio
  assert kinds["all-reduce"]["count"] <= 2
  # No parameter is gathered or scattered; what else moves is tiny (metric inputs).
  assert kinds["reduce-scatter"]["count"] == 0
  assert kinds["all-gather"]["bytes"] < 0.02 * r["param_bytes"]
  assert kinds["all-to-all"]["count"] == kinds["collective-permute"]["count"] == 0


def test_fsdp_step_gathers_each_sharded_parameter_about_once(step_collectives):
  r = step_collectives["fsdp"]
  assert r["mesh"] == [1, 8, 1]
  assert 0.5 * r["param_bytes"] < r["sharded_param_bytes"] < r["param_bytes"]
  kinds = r["kinds"]
  gathered = kinds["all-gather"]["bytes"] / r["sharded_param_bytes"]
  assert 1.0 <= gathered <= 1.1, gathered  # no second gather of the weights for backward
  # XLA:CPU reduces FSDP gradients with all-reduce, not reduce-scatter: either way the
  # gradient bytes reduced equal the parameter bytes.
  reduced = kinds["all-reduce"]["bytes"] + kinds["reduce-scatter"]["bytes"]
  assert 1.0 <= reduced / r["param_bytes"] <= 1.05


def test_train_step_rejects_an_unknown_mesh_in_one_line():
  proc = run_python(["benchmarks/train_step.py", "--config=configs/synthetic_tiny.py",
                     "--collectives=8", "--collective_meshes=data,pipeline"], check=False)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert "--collective_meshes" in lines[-1] and "'pipeline'" in lines[-1]


@pytest.fixture(scope="module")
def suite():
  """The device suite's --smoke run on CPU: stdout and its JSON line."""
  proc = run_python(["benchmarks/device_suite.py", "--smoke", "--json"],
                    {"JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"})
  lines = proc.stdout.strip().splitlines()
  return lines, json.loads(lines[-1])


def test_device_suite_smoke_prints_every_attention_cell(suite):
  lines, data = suite
  cells = {(c["tokens"], c["kind"]): c for c in data["attention"]}
  assert set(cells) == {(n, kind) for n in (17, 33) for kind in ("dense", "knn")}
  for (n, kind), cell in cells.items():
    assert cell["k"] == (math.floor(2 * n / 3 + 0.5) if kind == "knn" else n)
    assert set(cell["paths"]) == {"xla", "blocked", "kernel"}
    for path, p in cell["paths"].items():
      assert "na" not in p, (n, kind, path, p)  # the interpreter runs the kernel on CPU
      for key in ("fwd_ms_median", "fwd_ms_min", "fwd_bwd_ms_median", "fwd_bwd_ms_min"):
        assert math.isfinite(p[key]) and 0 < p[key], (n, kind, path, key)
      assert p["temp_bytes"] >= 0
      # All paths compute the same attention.
      assert p["max_abs_diff"] < 1e-5, (n, kind, path, p["max_abs_diff"])
    assert cells[(n, kind)]["paths"]["kernel"]["impl"] == "pallas_interpret"
    assert any(line.split()[:2] == [str(n), kind] for line in lines), (n, kind)


def test_device_suite_smoke_prints_both_training_rows(suite):
  lines, data = suite
  rows = {r["label"]: r for r in data["train"]}
  assert set(rows) == {"ViViT-B FE", "Dk-ViViT-B"}
  for label, r in rows.items():
    assert r["dtype"] == "bfloat16"
    for key in ("step_ms_median", "step_ms_min", "clips_per_s", "model_gflops_per_clip",
                "peak_memory_gb"):
      assert math.isfinite(r[key]) and r[key] > 0, (label, key, r[key])
    assert r["mfu"] is None  # no peak figure for a CPU
    assert r["peak_memory_source"].startswith("compiled memory_analysis")
    assert any(line.strip().startswith(label) for line in lines), label
