"""The shared config-section helper: overlay on defaults, unknown keys named with a hint."""

import ml_collections
import pytest

from vivit_knn import keys


def test_merge_overlays_the_given_keys_and_keeps_the_rest():
  defaults = ml_collections.ConfigDict({"a": 1, "b": "x"})
  assert keys.merge_known({"b": "y"}, defaults, "section") == {"a": 1, "b": "y"}
  assert keys.merge_known(None, defaults, "section") == {"a": 1, "b": "x"}
  assert defaults.b == "x"  # not modified


def test_unknown_keys_are_all_named_with_a_suggestion():
  with pytest.raises(ValueError) as err:
    keys.merge_known({"momentun": 0.5, "zzz": 1}, {"momentum": 0.9}, "optimizer")
  message = str(err.value)
  assert "optimizer.momentun (did you mean 'optimizer.momentum'?)" in message
  assert "optimizer.zzz" in message and "zzz (did you mean" not in message


def test_did_you_mean_is_empty_without_a_close_name():
  assert keys.did_you_mean("verb_nuon", ["verb_noun", "distill"]) == (
      " (did you mean 'verb_noun'?)")
  assert keys.did_you_mean("xyz", ["verb_noun"]) == ""
