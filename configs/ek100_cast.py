"""CAST-B/16 on EPIC-Kitchens-100 actions, 16x224x224: two heads (noun: spatial, verb: temporal).

Data: `python -m vivit_knn.data.convert --format=ek100 --annotations=<folder with
EPIC_100_train.csv, EPIC_100_validation.csv> --root=<EPIC-KITCHENS folder> --out=<dir>`
cuts every action segment out of its video; its records carry the verb and the noun.
`dataset.label_source='verb_noun'` reads them and labels each clip with its action
`verb * 300 + noun` over 97 x 300 = 29,100 classes. Evaluation reports verb, noun and
action top-1. The model's logits are the joint log-probabilities `log p(verb) + log p(noun)`, so
the trainer's cross-entropy is the sum of the verb and noun losses and its top-1
is the action accuracy (both correct). Otherwise as `k400_cast.py`: frozen
experts, about 45M trainable parameters, 50 epochs, drop path 0.2, 2 x 3 views.
"""

from vivit_knn.presets import cast_b16

EK100_TRAIN_SIZE = 67_217  # action segments in the train split
NUM_VERBS, NUM_NOUNS = 97, 300


def get_config():
  """CAST-B/16 with a 300-way noun head and a 97-way verb head."""
  config = cast_b16("ek100_cast", num_train=EK100_TRAIN_SIZE,
                    num_classes=NUM_VERBS * NUM_NOUNS, epochs=50, stochastic_depth=0.2,
                    frame_stride=2, num_test_clips=2)
  config.model.cast.num_verbs, config.model.cast.num_nouns = NUM_VERBS, NUM_NOUNS
  config.dataset.label_source = "verb_noun"
  config.eval.confusion_matrix = False  # 29,100 classes
  return config
