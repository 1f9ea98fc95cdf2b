"""Launch scripts parse, and their dry runs assemble the right commands."""

import os
import subprocess

import pytest

from tests.tiny import ROOT

SCRIPTS = ("launch/tpu_pod.sh", "launch/slurm_gpu.sbatch", "launch/local.sh")


def _dry(script, *args, **env):
  full = dict(os.environ, DRY_RUN="1", **env)
  return subprocess.run(["bash", script, *args], cwd=ROOT, env=full, capture_output=True,
                        text=True, timeout=60)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
  assert subprocess.run(["bash", "-n", script], cwd=ROOT).returncode == 0


def test_tpu_pod_runs_the_same_command_on_every_worker():
  proc = _dry("launch/tpu_pod.sh", "my-pod", "us-central2-b", "configs/ucf101_dk.py",
              "gs://bucket/runs/dk", "--config.train.num_epochs=5")
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert lines[0].startswith("gcloud compute tpus tpu-vm create my-pod")
  assert "--accelerator-type=v4-32" in lines[0]
  assert all("--worker=all" in line for line in lines[1:])
  train = lines[-1]
  assert "ssh my-pod" in train and "--zone=us-central2-b" in train
  for part in ("-m\\ vivit_knn.main", "--config=configs/ucf101_dk.py",
               "--workdir=gs://bucket/runs/dk", "--config.train.num_epochs=5"):
    assert part in train, (part, train)
  assert "jax\\[tpu\\]" in lines[-2] or "jax[tpu]" in lines[-2]


def test_tpu_pod_rejects_a_local_workdir():
  proc = _dry("launch/tpu_pod.sh", "p", "z", "configs/ucf101_dk.py", "runs/local")
  assert proc.returncode == 2 and "gs://" in proc.stderr


def test_slurm_starts_one_process_per_gpu_with_srun():
  text = open(os.path.join(ROOT, "launch/slurm_gpu.sbatch")).read()
  assert "#SBATCH --ntasks-per-node=8" in text and "#SBATCH --gpus-per-node=8" in text
  assert "#SBATCH --signal=USR1@" in text  # early warning -> checkpoint (see preemption.py)
  proc = _dry("launch/slurm_gpu.sbatch", "--config.train.num_epochs=3",
              CONFIG="configs/hmdb51_dk.py", WORKDIR="/shared/dk")
  assert proc.returncode == 0, proc.stderr
  cmd = proc.stdout.strip()
  assert cmd.startswith("srun ")
  for part in ("-m vivit_knn.main", "--config=configs/hmdb51_dk.py", "--workdir=/shared/dk",
               "--config.train.num_epochs=3"):
    assert part in cmd


def test_local_multi_process_assembles_coordinator_flags():
  proc = _dry("launch/local.sh", "configs/synthetic_tiny.py", "runs/x", "--config.seed=1",
              NUM_PROCESSES="2", PORT="23999")
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 2
  for i, line in enumerate(lines):
    assert "--coordinator_address=127.0.0.1:23999" in line
    assert "--num_processes=2" in line and f"--process_id={i}" in line
    assert "--config=configs/synthetic_tiny.py" in line and "--config.seed=1" in line


def test_local_single_process_runs_main_directly():
  proc = _dry("launch/local.sh")
  assert proc.returncode == 0
  assert "vivit_knn.main --config=configs/synthetic_dk.py --workdir=runs/local" in proc.stdout
  assert "coordinator" not in proc.stdout


def test_local_uses_the_readme_venv_unless_python_is_set():
  proc = _dry("launch/local.sh")
  venv_python = os.path.join(ROOT, ".venv", "bin", "python")
  expected = venv_python if os.access(venv_python, os.X_OK) else "python3"
  assert proc.stdout.split()[0] == expected, proc.stdout
  assert _dry("launch/local.sh", PYTHON="/opt/py/bin/python3").stdout.split()[0] == (
      "/opt/py/bin/python3")


def test_wheels_built_in_the_checkout_are_ignored_by_git():
  proc = subprocess.run(["git", "check-ignore", "-q", "vivit_knn-0.1.0-py3-none-any.whl"],
                        cwd=ROOT, check=False)
  assert proc.returncode == 0
