"""The shared config-section helper: overlay on defaults, unknown keys named with a hint."""

import ml_collections
import pytest

from vivit_knn import keys


def test_overlay_sets_the_given_keys_and_keeps_the_rest():
  defaults = ml_collections.ConfigDict({"a": 1, "b": "x"})
  assert keys.overlay_known(None, defaults, "section").to_dict() == {"a": 1, "b": "x"}
  assert keys.overlay_known({"b": "y"}, defaults, "section").to_dict() == {"a": 1, "b": "y"}


def test_unknown_keys_are_all_named_with_a_suggestion():
  defaults = ml_collections.ConfigDict({"momentum": 0.9})
  with pytest.raises(ValueError) as err:
    keys.overlay_known({"momentun": 0.5, "zzz": 1}, defaults, "optimizer")
  message = str(err.value)
  assert "optimizer.momentun (did you mean 'optimizer.momentum'?)" in message
  assert "optimizer.zzz" in message and "zzz (did you mean" not in message


def test_did_you_mean_is_empty_without_a_close_name():
  assert keys.did_you_mean("verb_nuon", ["verb_noun", "distill"]) == (
      " (did you mean 'verb_noun'?)")
  assert keys.did_you_mean("xyz", ["verb_noun"]) == ""
