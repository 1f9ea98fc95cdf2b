"""The training loop: resume from the newest checkpoint, step, log, save, evaluate."""

from __future__ import annotations

import json
import os
import weakref
from typing import Any, Dict, Optional

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from vivit_knn.errors import WorkdirBusyError
from vivit_knn.train import (checkpoint, evaluation, initialisation, preemption, recovery,
                             run_summary, steps, workdir_lock)
from vivit_knn.train.experiment import Experiment, TrainState, build_experiment
from vivit_knn.train.prefetch import DevicePrefetcher
from vivit_knn.train.run_config import load_run_config, save_run_config
from vivit_knn.train.run_info import write_run_info
from vivit_knn.train.summary import ProgressLog, open_writer


BEST_RECORD = os.path.join("eval", "best.json")
_EVAL_STEPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # compiled once per run


def _rngs(seed: int) -> jax.Array:
  return jax.random.split(jax.random.key(seed))  # (init, train)


def _report(text: str) -> None:
  print(text, flush=True)
  logging.info("%s", text)


def _restore_or_init(exp: Experiment, ckpt: checkpoint.Checkpointer, workdir: str) -> TrainState:
  """The run's first state (`initialisation.initial_state`), its summary printed and kept."""
  state, summary = initialisation.initial_state(exp, ckpt, _rngs(exp.config.seed)[0])
  if jax.process_index() == 0:
    _report("\n".join(summary.lines()))
    if summary.source != "resume":
      initialisation.write_summary(workdir, summary)
  return state


def _check_finite(history, step: int, ckpt: checkpoint.Checkpointer, state, workdir: str,
                  optimizer: ml_collections.ConfigDict) -> None:
  """Stops the run, keeping the last good checkpoint, if a recent loss or state is not finite.

  The state (parameters and optimiser moments) is checked after each update, so an overflowed
  one is never saved; the message says how to go on (`recovery.nonfinite_advice`).
  """
  host = jax.device_get(history)
  losses = np.asarray([h["loss"] for h in host])
  finite = np.asarray([h[steps.FINITE] for h in host])
  if np.all(np.isfinite(losses)) and np.all(finite == 1.0):
    return
  ckpt.close()
  leaf = steps.first_nonfinite_leaf(state)
  what = (f"the updated state has a non-finite value (first: {leaf})" if leaf
          else "the training loss is not finite")
  advice = recovery.nonfinite_advice(workdir, ckpt, optimizer)
  raise FloatingPointError(f"step {step}: {what}; stopped without saving. {advice}")


def _mean_metrics(history) -> Dict[str, float]:
  """Each metric's mean over the steps that logged it (a window can span a change of objective)."""
  host = jax.device_get(history)
  names = dict.fromkeys(k for h in host for k in h if k != steps.FINITE)
  return {k: float(np.mean([h[k] for h in host if k in h])) for k in names}


def _lock(workdir: str) -> Optional[workdir_lock.WorkdirLock]:
  """The workdir's training lock, taken by process 0 for every process of the run."""
  lock, busy = None, None
  if jax.process_index() == 0:
    try:
      lock = workdir_lock.lock_workdir(workdir)
    except WorkdirBusyError as err:
      busy = err
  if jax.process_count() > 1:
    locked = multihost_utils.broadcast_one_to_all(np.int32(busy is None))
    if not locked and busy is None:
      busy = WorkdirBusyError(f"--workdir={workdir} is being trained by another run (process 0 "
                              "could not take its lock)")
  if busy is not None:
    raise busy
  return lock


def _check_resume_step(ckpt: checkpoint.Checkpointer, exp: Experiment, workdir: str) -> None:
  """Refuses a run whose end lies before its newest checkpoint: a resume never goes back."""
  latest = ckpt.latest_step()
  if latest is not None and latest > exp.total_steps:
    raise ValueError(
        f"--workdir={workdir} already holds checkpoint step {latest}, beyond the end of this "
        f"run at step {exp.total_steps} ({exp.plan.total_source}): set "
        f"train.num_train_steps to at least {latest}, go back with --restart_from_step=<step>, "
        "or train in another --workdir")


def _restart(ckpt: checkpoint.Checkpointer, step: int) -> None:
  """Sets the steps newer than `step` aside, so that the run goes on from `step`."""
  kept = ckpt.all_steps()
  if step not in kept:
    raise ValueError(f"--restart_from_step={step}: no such checkpoint in {ckpt.directory} "
                     f"(kept steps: {', '.join(map(str, kept)) or 'none'})")
  newer = [s for s in kept if s > step]
  if newer:
    moved = ckpt.set_aside(newer, "checkpoints_superseded")
    if jax.process_index() == 0:
      print(f"restarting from step {step}: moved the newer steps {newer} to "
            f"{os.path.dirname(moved[0]) if moved else 'checkpoints_superseded'}", flush=True)


def train(config: ml_collections.ConfigDict, workdir: str,
          exp: Optional[Experiment] = None, *, restart_from_step: Optional[int] = None,
          strict: bool = False) -> Dict[str, Any]:
  """Trains to `exp.total_steps`, checkpointing into `workdir`; resumes if it holds one.

  Holds the workdir's training lock throughout. `restart_from_step` goes on from that kept
  step, setting newer ones aside; `strict` refuses checkpoints without checksums. Returns the
  last logged train metrics and, when `train.eval_at_end`, the eval result.
  """
  lock = _lock(workdir)
  try:
    return _train_locked(config, workdir, exp, restart_from_step, strict)
  finally:
    if lock is not None:
      lock.release()


def _train_locked(config: ml_collections.ConfigDict, workdir: str, exp: Optional[Experiment],
                  restart_from_step: Optional[int], strict: bool) -> Dict[str, Any]:
  exp = exp or build_experiment(config)
  cfg = config.train
  is_chief = jax.process_index() == 0
  ckpt = checkpoint.Checkpointer(workdir, keep=cfg.keep_checkpoints,
                                 save_every=cfg.checkpoint_every_steps, strict=strict)
  if restart_from_step is not None:
    _restart(ckpt, restart_from_step)
  _check_resume_step(ckpt, exp, workdir)
  # The config this run trains with (a resume's allowed overrides included), so that the
  # next resume, eval or tool uses the same settings. A config.json that is not a run
  # config (another program's file) is refused by the load, never overwritten.
  load_run_config(workdir)
  save_run_config(workdir, config)  # process 0 writes it
  if is_chief:
    write_run_info(workdir, exp.dataset.info.class_names, exp.dataset.info.input_shape)
    summary = run_summary.summarize_experiment(exp)
    path = run_summary.write_run_summary(workdir, summary)
    _report(f"{run_summary.format_run_summary(summary)}\n  (written to {path})")
  state = _restore_or_init(exp, ckpt, workdir)
  start = int(jax.device_get(state.step))
  phase, frozen, train_step = None, None, None
  train_rng = _rngs(config.seed)[1]
  batches = DevicePrefetcher(exp.dataset.train_batches(
      cfg.global_batch_size, start_step=start, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count()),
      exp.mesh, cfg.prefetch_batches)

  writer = open_writer(os.path.join(workdir, "train"), enabled=is_chief)
  log = ProgressLog(exp.total_steps, start, config.experiment_name, cfg.global_batch_size,
                    writer, enabled=is_chief)
  best = _best_checkpointer(workdir, cfg, strict)
  history, last = [], {}
  stop = preemption.PreemptionWatcher()
  result: Dict[str, Any] = {"train": last, "step": exp.total_steps, "state": state,
                            "class_names": exp.dataset.info.class_names}
  try:
    for step in range(start, exp.total_steps):
      if exp.objective.phase(step) != phase:
        phase = exp.objective.phase(step)
        logging.info("Objective phase %r from step %d", phase, step)
        frozen = exp.objective.init_frozen(exp, phase)
        train_step = steps.make_train_step(exp, frozen, phase)
      state, step_metrics = train_step(state, next(batches), train_rng, frozen)
      history.append(step_metrics)
      done = step + 1
      if step == start:
        log.first()
      due_log = done % cfg.log_every_steps == 0 or done == exp.total_steps
      due_save = done % cfg.checkpoint_every_steps == 0
      if due_log or due_save:
        # Never save (or go on from) a state whose loss went non-finite.
        _check_finite(history, done, ckpt, state, workdir, config.optimizer)
      if due_log:
        last = _mean_metrics(history)
        history = []
        rates = log.line(done, last)
        skipped = {f"data/skipped_{k}": v for k, v in exp.dataset.skipped_examples().items()}
        writer.write_scalars(done, {**{f"train/{k}": v for k, v in {**last, **rates}.items()},
                                    **skipped})
        writer.flush()  # TensorBoard shows the step now, and a killed run keeps its curves
      ckpt.save(done, state)
      if (cfg.eval_every_steps and done % cfg.eval_every_steps == 0
          and (done < exp.total_steps or not cfg.eval_at_end)):
        with log.evaluating(done):
          _evaluate(exp, state, done, workdir, writer, best)
      # On several processes the stop flag is agreed on by a collective: only on log and
      # save steps, so that ordinary steps never wait for other hosts.
      if (due_log or due_save or jax.process_count() == 1) and stop.requested():
        if history:
          _check_finite(history, done, ckpt, state, workdir, config.optimizer)
        ckpt.save(done, state, force=True)  # unless saved already
        ckpt.close()
        logging.warning("Preempted: saved step %d in %s; rerun the same command to resume.",
                        done, ckpt.directory)
        result.update(train=last, step=done, state=state, preempted=True)
        return result
    # The final save runs with stop signals still deferred: a signal now is served
    # once the checkpoint is complete. (The last step, a log step, was checked finite.)
    ckpt.save(exp.total_steps, state, force=True)
    ckpt.close()
    result.update(train=last, state=state)
    if stop.requested():
      result["preempted"] = True
      return result
    stop.saved(exp.total_steps, ckpt.directory)
    if exp.total_steps > start:
      log.end(exp.total_steps)
    if cfg.eval_at_end:
      result["eval"], result["eval_paths"] = _evaluate(exp, state, exp.total_steps, workdir,
                                                       writer, best, final=True)
    return result
  finally:
    batches.close()
    writer.close()
    if best is not None:
      best.close()
    stop.release()


def _best_checkpointer(workdir: str, cfg: ml_collections.ConfigDict,
                       strict: bool) -> Optional[checkpoint.Checkpointer]:
  """With `train.eval_every_steps`, the folder that keeps the checkpoint of the best eval."""
  if not cfg.eval_every_steps:
    return None
  return checkpoint.Checkpointer(workdir, keep=1, strict=strict, folder=checkpoint.BEST_FOLDER,
                                 best_metric=cfg.best_metric)


def _evaluate(exp: Experiment, state: TrainState, step: int, workdir: str, writer,
              best: Optional[checkpoint.Checkpointer], final: bool = False):
  """Evaluates `state` at `step`: reports and `eval/` scalars; `best` keeps the best eval's state.

  A periodic eval (not `final`) prints its metrics on one line.
  `<workdir>/eval/best.json` records the kept step and its metrics.
  """
  if exp not in _EVAL_STEPS:
    _EVAL_STEPS[exp] = steps.make_eval_step(exp)
  result = evaluation.run_eval(exp, state.params, _EVAL_STEPS[exp])
  paths = evaluation.write_eval_report(exp, result, workdir, step, writer)
  scalars = {k: float(result[k]) for k in evaluation.scalar_names(result)}
  chief = jax.process_index() == 0
  if chief and not final:  # `main` prints the final eval's whole report
    print(f"eval at step {step}: " + " ".join(f"{k}={v:.4f}" for k, v in scalars.items()),
          flush=True)
  if best is not None:
    best.save(step, state, force=True, metrics=scalars)
    best.wait()
    if best.best_step() == step and chief:
      record = {"step": step, "metric": exp.config.train.best_metric, "metrics": scalars,
                "checkpoint": os.path.join(best.directory, str(step))}
      checkpoint.write_file(workdir, BEST_RECORD, json.dumps(record, indent=2) + "\n")
      print(f"best {record['metric']} so far: {scalars[record['metric']]:.4f} at step {step} "
            f"(kept in {best.directory})", flush=True)
  return result, paths


def _report_dir(workdir: str, output_dir: Optional[str]) -> str:
  """Where eval reports go: `output_dir`, else the workdir when it can be written."""
  if output_dir:
    return output_dir
  path = str(checkpoint.resolve(workdir))
  if "://" not in path and os.path.isdir(path) and not os.access(path, os.W_OK):
    raise PermissionError(f"--workdir={workdir} is not writable; pass --output_dir=<dir> for "
                          "the eval reports")
  return workdir


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step: Optional[int] = None,
                        output_dir: Optional[str] = None, strict: bool = False
                        ) -> Dict[str, Any]:
  """Restores a checkpoint from `workdir` (the newest readable by default) and evaluates it.

  `config.eval.checkpoint` chooses 'latest', 'best' (kept with `train.eval_every_steps`) or a
  step. Without checkpoints it evaluates the weights `config.init_from` configures, as step 0 (with
  nothing configured that is an error, and nothing is created). Reports go to `output_dir`
  (default: the workdir). Takes no lock: a trainer may save and rotate steps meanwhile.
  """
  choice = str(config.eval.checkpoint)  # 'latest', 'best' or a step number
  if step is None and choice.isdigit():
    step = int(choice)
  if choice == "best" and not (checkpoint.resolve(workdir) / checkpoint.BEST_FOLDER).is_dir():
    raise FileNotFoundError(
        f"--config.eval.checkpoint=best: --workdir={workdir} keeps no best checkpoint (train "
        "with --config.train.eval_every_steps=<n> to keep one)")
  reports = _report_dir(workdir, output_dir)
  exp = build_experiment(config, training=False)
  summary = None
  if checkpoint.has_checkpoints(workdir):
    ckpt = checkpoint.Checkpointer(workdir, read_only=True, strict=strict,
                                   folder=checkpoint.BEST_FOLDER if choice == "best" else "checkpoints")
    params = ckpt.restore(exp.abstract_state(), step=step).params  # newest readable by default
    step = ckpt.restored_step
    ckpt.close()
  elif initialisation.configured_sources(config):
    host_params, summary = initialisation.initial_params(exp, _rngs(config.seed)[0])
    params, step = initialisation.state_from_params(exp, host_params).params, 0
    if jax.process_index() == 0:
      print("\n".join(["no checkpoint in --workdir: evaluating the configured initial weights"]
                      + summary.lines()), flush=True)
  else:
    raise FileNotFoundError(
        f"--workdir={workdir} holds no checkpoint (looked in "
        f"{checkpoint.resolve(workdir) / 'checkpoints'}); train first, point --workdir at a "
        "training run, or configure init_from to evaluate pretrained weights")
  result = evaluation.run_eval(exp, params)
  writer = open_writer(os.path.join(reports, "eval"), enabled=jax.process_index() == 0)
  try:
    paths = evaluation.write_eval_report(exp, result, reports, step, writer)
  finally:
    writer.close()
  return {"eval": result, "eval_paths": paths, "step": step, "init": summary,
          "class_names": exp.dataset.info.class_names}
