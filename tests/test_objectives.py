"""The training objective by name: `config.loss.objective`, the automatic choice, and its errors."""

import pytest

from tests.tiny import load_config, run_python
from vivit_knn.train import objective_table
from vivit_knn.train.distill import DistillObjective
from vivit_knn.train.multihead import VerbNounObjective
from vivit_knn.train.objectives import Objective

TINY = ["-m", "vivit_knn.main", "--config=configs/synthetic_tiny.py"]


def _tiny(objective=""):
  config = load_config("synthetic_tiny")
  config.loss.objective = objective
  return config


def _two_heads(objective=""):
  config = load_config("synthetic_cast")
  config.model.cast.num_verbs, config.model.cast.num_nouns = 2, 2
  config.loss.objective = objective
  return config


def _distill(objective=""):
  config = load_config("synthetic_tsd")
  config.loss.objective = objective
  return config


def test_the_table_names_every_objective():
  assert set(objective_table.OBJECTIVES) == {"classification", "verb_noun", "distill"}


@pytest.mark.parametrize("make,expected", [
    (_tiny, "classification"), (_two_heads, "verb_noun"), (_distill, "distill")])
def test_empty_name_chooses_from_the_model_and_distill(make, expected):
  assert objective_table.objective_name(make()) == expected


@pytest.mark.parametrize("make,name,kind", [
    (_tiny, "classification", Objective),
    (_two_heads, "classification", Objective),
    (_two_heads, "verb_noun", VerbNounObjective),
    (_distill, "distill", DistillObjective)])
def test_a_name_builds_its_objective(make, name, kind):
  objective = objective_table.build_objective(make(name), num_train_examples=8)
  assert type(objective) is kind


def test_two_heads_by_name_match_the_automatic_choice():
  named = objective_table.build_objective(_two_heads("verb_noun"))
  auto = objective_table.build_objective(_two_heads(""))
  assert (named.num_verbs, named.num_nouns) == (auto.num_verbs, auto.num_nouns) == (2, 2)


def test_unknown_name_lists_the_choices():
  with pytest.raises(ValueError, match="loss.objective") as err:
    objective_table.check_objective(_tiny("verb_nuon"))
  message = str(err.value)
  assert all(name in message for name in ("classification", "verb_noun", "distill"))
  assert "did you mean 'verb_noun'" in message


def test_verb_noun_needs_two_heads():
  with pytest.raises(ValueError, match=r"loss.objective.*model.cast.num_verbs"):
    objective_table.check_objective(_tiny("verb_noun"))


def test_distill_needs_a_method():
  with pytest.raises(ValueError, match=r"loss.objective.*distill.method"):
    objective_table.check_objective(_tiny("distill"))


def test_another_objective_beside_a_distill_method_is_refused():
  with pytest.raises(ValueError, match=r"loss.objective.*distill.method"):
    objective_table.check_objective(_distill("classification"))


def test_main_trains_with_a_named_objective(tmp_path):
  work = tmp_path / "run"
  run_python(TINY + [f"--workdir={work}", "--config.loss.objective=classification",
                     "--config.train.num_train_steps=2", "--config.optimizer.warmup_steps=0",
                     "--config.train.eval_at_end=False"])
  assert (work / "checkpoints" / "2").is_dir()


@pytest.mark.parametrize("name,field", [("nope", "loss.objective"),
                                        ("distill", "distill.method")])
def test_main_refuses_an_objective_naming_the_field(tmp_path, name, field):
  proc = run_python(TINY + [f"--workdir={tmp_path / 'run'}", f"--config.loss.objective={name}"],
                    check=False)
  assert proc.returncode == 2, proc.stderr
  assert field in proc.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()
