"""Config schema: unknown keys and impossible shapes are errors that name the field."""

import os

import pytest

from tests.tiny import ROOT, load_config as _load, tiny_config
from vivit_knn import config as config_lib

INPUT = (4, 24, 24, 3)


def test_tiny_config_is_valid():
  config_lib.validate(tiny_config(), INPUT)


def test_misspelt_key_is_rejected_with_suggestion():
  config = tiny_config()
  config.model.hiden_size = 3
  with pytest.raises(ValueError, match=r"model\.hiden_size.*did you mean 'model\.hidden_size'"):
    config_lib.check_keys(config)


def test_unknown_dataset_key_is_rejected():
  config = tiny_config()
  config.dataset.num_frame = 3
  with pytest.raises(ValueError, match=r"dataset\.num_frame"):
    config_lib.check_keys(config)


def test_unknown_dataset_name():
  config = tiny_config()
  config.dataset.name = "kinetics9000"
  with pytest.raises(ValueError, match=r"dataset\.name"):
    config_lib.check_keys(config)


@pytest.mark.parametrize("mutate,field", [
    (lambda c: c.model.update(patch_size=(8, 8, 3)), "model.patch_size.*num_frames"),
    (lambda c: c.model.update(patch_size=(7, 8, 2)), "model.patch_size.*height"),
    (lambda c: c.model.update(patch_size=(8, 5, 2)), "model.patch_size.*width"),
    (lambda c: c.model.spatial_transformer.attention.update(knn_k=50.0),
     r"model\.spatial_transformer\.attention\.knn_k"),
    (lambda c: c.model.temporal_transformer.attention.update(knn_k=0.0),
     r"model\.temporal_transformer\.attention\.knn_k"),
    (lambda c: c.model.update(num_heads=3), r"model\.num_heads"),
    (lambda c: c.model.update(classifier="max"), r"model\.classifier"),
    (lambda c: c.model.update(model_type="model5"), r"model\.model_type"),
    (lambda c: c.model.update(kernel_init_method="middle"), r"model\.kernel_init_method"),
    (lambda c: c.model.spatial_transformer.attention.update(kind="sparse"),
     r"model\.spatial_transformer\.attention\.kind"),
    (lambda c: c.model.update(dropout_rate=1.5), r"model\.dropout_rate"),
])
def test_impossible_model_configs_name_the_field(mutate, field):
  config = tiny_config()
  mutate(config)
  with pytest.raises(ValueError, match=field):
    config_lib.validate(config, INPUT)


def test_knn_k_count_larger_than_tokens_in_spacetime():
  config = tiny_config("spacetime")
  config.model.attention.knn_k = 19.0  # CLS + 2*3*3 = 19 tokens: fits
  config_lib.validate(config, INPUT)
  config.model.attention.knn_k = 20.0
  with pytest.raises(ValueError, match=r"model\.attention\.knn_k.*19 tokens"):
    config_lib.validate(config, INPUT)


def test_gap_required_for_models_3_and_4():
  config = tiny_config("factorized_self_attention_block")
  config.model.classifier = "token"
  with pytest.raises(ValueError, match=r"model\.classifier.*gap"):
    config_lib.validate(config, INPUT)


def test_batch_must_divide_devices():
  config = tiny_config()
  config.train.global_batch_size = 6
  with pytest.raises(ValueError, match=r"train\.global_batch_size"):
    config_lib.validate(config, INPUT, num_devices=4)


@pytest.mark.parametrize("name", sorted(
    f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py")))
def test_every_shipped_config_passes_key_and_model_checks(name):
  config = _load(name)
  config_lib.check_keys(config)
  shape = (config.dataset.num_frames, config.dataset.image_size, config.dataset.image_size, 3)
  config_lib.check_model(config.model, shape)


def test_paper_config_values():
  dk = _load("ucf101_dk")
  assert dk.model.model_type == "factorized_encoder"
  assert (dk.model.spatial_transformer.num_layers, dk.model.temporal_transformer.num_layers) == (8, 4)
  assert dk.model.spatial_transformer.attention.kind == "knn"
  assert dk.model.temporal_transformer.attention.kind == "knn"
  assert dk.model.spatial_transformer.attention.knn_k == pytest.approx(2 / 3)
  assert tuple(dk.model.patch_size) == (16, 16, 2) and dk.dataset.num_frames == 8
  assert dk.optimizer.name == "sgd" and dk.optimizer.momentum == 0.9
  assert dk.optimizer.warmup_epochs == 2.5 and dk.optimizer.warmup_steps == 0
  uk = _load("ucf101_uk")
  assert uk.model.model_type == "spacetime" and uk.model.num_layers == 12
  assert uk.model.attention.kind == "knn"
  s, t = _load("ucf101_dk_s"), _load("ucf101_dk_t")
  assert (s.model.spatial_transformer.attention.kind, s.model.temporal_transformer.attention.kind) == ("knn", "dense")
  assert (t.model.spatial_transformer.attention.kind, t.model.temporal_transformer.attention.kind) == ("dense", "knn")


@pytest.mark.parametrize("mutate, key, instead", [
    (lambda m: m.attention.update(knn_k=0.5), "model.attention.knn_k=0.5",
     "model.spatial_transformer.attention.knn_k or model.temporal_transformer.attention.knn_k"),
    (lambda m: m.attention.update(kind="knn"), "model.attention.kind='knn'",
     "model.spatial_transformer.attention.kind or model.temporal_transformer.attention.kind"),
    (lambda m: m.update(num_layers=2), "model.num_layers=2",
     "model.spatial_transformer.num_layers or model.temporal_transformer.num_layers"),
    (lambda m: m.temporal_attention.update(impl="blocked"),
     "model.temporal_attention.impl='blocked'", "model.temporal_transformer.attention.impl"),
])
def test_factorised_encoder_refuses_the_keys_it_never_reads(mutate, key, instead):
  config = tiny_config()
  mutate(config.model)
  with pytest.raises(ValueError) as err:
    config_lib.validate(config, INPUT)
  message = str(err.value)
  assert message.startswith(f"{key} cannot take effect (model.model_type='factorized_encoder'")
  assert message.endswith(f": set {instead} instead"), message
  assert "\n" not in message


def test_every_refused_key_is_named_in_one_message():
  config = tiny_config()
  config.model.num_layers = 3
  config.model.attention.knn_k = 0.5
  with pytest.raises(ValueError) as err:
    config_lib.check_model(config.model, INPUT)
  assert "model.attention.knn_k=0.5 cannot" in str(err.value)
  assert "model.num_layers=3 cannot" in str(err.value)


def test_keys_at_their_defaults_are_not_refused():
  config = tiny_config()
  config.model.attention = config_lib.attention_config()  # set, but to the schema's default
  config.model.num_layers = config_lib.base_config().model.num_layers
  config_lib.validate(config, INPUT)


def test_one_encoder_layouts_read_attention_but_never_temporal_attention():
  config = tiny_config("spacetime")
  config.model.attention.knn_k = 0.5
  config.model.num_layers = 3
  config_lib.validate(config, INPUT)
  config.model.temporal_attention.kind = "knn"
  with pytest.raises(ValueError, match=r"^model\.temporal_attention\.kind='knn' cannot take "
                     r"effect \(ViViT has no separate time attention.*: set "
                     r"model\.attention\.kind instead$"):
    config_lib.validate(config, INPUT)


def test_a_key_only_the_experts_fix_must_stay_at_its_default():
  config = _load("synthetic_cast")
  config.model.mlp_activation = "quick_gelu"
  with pytest.raises(ValueError, match=r"^model\.mlp_activation='quick_gelu' cannot take effect "
                     r"\(the experts of model\.name='cast' fix their own activations\): leave "
                     r"it at its default ''$"):
    config_lib.validate(config)


def test_recipes_set_only_the_keys_their_layout_reads():
  schema = config_lib.base_config().model
  dk, uk = _load("ucf101_dk"), _load("ucf101_uk")
  assert dk.model.attention.to_dict() == schema.attention.to_dict()
  assert dk.model.num_layers == schema.num_layers
  assert uk.model.spatial_transformer.to_dict() == schema.spatial_transformer.to_dict()
  assert uk.model.temporal_transformer.to_dict() == schema.temporal_transformer.to_dict()
  assert (uk.model.num_layers, uk.model.attention.kind) == (12, "knn")


def test_a_video_dataset_key_on_the_synthetic_dataset_says_why():
  config = tiny_config()
  config.dataset.frame_stride = 2
  with pytest.raises(ValueError, match=r"dataset\.frame_stride \(cannot take effect: only "
                     r"dataset\.name 'tfrecord', 'tfds', 'ucf101', 'hmdb51' read it, this is "
                     r"'synthetic'\)"):
    config_lib.check_keys(config)


def test_validate_checks_the_model_against_the_dataset_s_clip_by_default():
  config = tiny_config()
  config.dataset.num_frames = 6  # 3 tubelets of 2 frames
  config_lib.validate(config)
  config.dataset.num_frames = 5
  with pytest.raises(ValueError, match=r"model\.patch_size.*num_frames=5"):
    config_lib.validate(config)
