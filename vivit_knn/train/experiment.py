"""Everything one run needs, built once from the config: data, model, mesh, optimizer, state."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from vivit_knn import config as config_lib
from vivit_knn.data.base import VideoDataset
from vivit_knn.data.registry import build_dataset
from vivit_knn.models.registry import build_model
from vivit_knn.train import optim, sharding
from vivit_knn.train.objective_table import build_objective, check_objective
from vivit_knn.train.objectives import Objective


@flax.struct.dataclass
class TrainState:
  """Step counter, parameters and optimizer state: what a checkpoint holds."""

  step: jax.Array
  params: Any
  opt_state: Any


@dataclasses.dataclass(eq=False)  # hashed by identity: per-run caches key on it
class Experiment:
  """The parts of a run, wired from one config (data -> model -> optimizer -> mesh)."""

  config: ml_collections.ConfigDict
  dataset: VideoDataset
  model: nn.Module
  mesh: Mesh
  optimizer: optax.GradientTransformation
  schedule: Callable[[Any], Any]
  total_steps: int
  objective: Objective
  plan: optim.StepPlan
  _abstract: Optional[TrainState] = dataclasses.field(default=None, init=False, repr=False)

  @property
  def num_classes(self) -> int:
    """Number of classes of the dataset."""
    return self.dataset.info.num_classes

  def dummy_input(self) -> jax.Array:
    """A one-clip zero input of the dataset's shape, for init and shape inference."""
    return jnp.zeros((1,) + tuple(self.dataset.info.input_shape), jnp.float32)

  def init_params(self, rng: jax.Array) -> Any:
    """Initialises model parameters (float32)."""
    return self.model.init({"params": rng}, self.dummy_input(), train=False)["params"]

  def _init_state(self, rng: jax.Array) -> TrainState:
    params = self.init_params(rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.optimizer.init(params))

  def abstract_state(self) -> TrainState:
    """Shapes, dtypes and shardings of the train state, without allocating it.

    The model init is traced for it once per experiment; later calls reuse the result.
    """
    if self._abstract is None:
      shapes = jax.eval_shape(self._init_state, jax.random.key(0))
      mesh_cfg = self.config.mesh
      shardings = TrainState(
          step=sharding.replicated(self.mesh),
          params=sharding.tree_shardings(shapes.params, self.mesh, mesh_cfg),
          opt_state=sharding.tree_shardings(shapes.opt_state, self.mesh, mesh_cfg))
      self._abstract = jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)
    return self._abstract

  def state_shardings(self) -> TrainState:
    """Shardings of every leaf of the train state on the mesh."""
    return jax.tree.map(lambda a: a.sharding, self.abstract_state())

  def init_state(self, rng: jax.Array) -> TrainState:
    """Creates the initial train state directly in its sharded layout."""
    return jax.jit(self._init_state, out_shardings=self.state_shardings())(rng)


def build_experiment(config: ml_collections.ConfigDict,
                     devices: Optional[Sequence[jax.Device]] = None,
                     training: bool = True) -> Experiment:
  """Validates `config` (ValueError naming the field) and builds the run on `devices` (all).

  Epoch-based settings become steps from the dataset's train-split size (`Experiment.plan`);
  with `training=False` (evaluation, inference) the schedule is never an error.
  """
  mesh = sharding.make_mesh(config.mesh, devices)
  config_lib.validate(config, num_devices=sharding.data_parallel_size(mesh),
                      process_count=jax.process_count())
  check_objective(config)
  dataset = build_dataset(config.dataset)
  model = build_model(config.model, dataset.info.num_classes)
  plan = optim.plan_steps(config, dataset.info.num_train_examples, training=training)
  tx, schedule = optim.build_optimizer(config.optimizer, plan.total_steps, plan.warmup_steps)
  return Experiment(config=config, dataset=dataset, model=model, mesh=mesh,
                    optimizer=tx, schedule=schedule, total_steps=plan.total_steps,
                    objective=build_objective(config, dataset.info.num_train_examples),
                    plan=plan)
