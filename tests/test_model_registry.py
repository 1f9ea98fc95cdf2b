"""A model family is one module plus one registry entry: config schema, checks, builder, rules."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from tests.tiny import load_config, tiny_config
from vivit_knn import config as config_lib
from vivit_knn.models import registry
from vivit_knn.models.attention import AttentionSpec
from vivit_knn.models.family import ModelFamily, attention_spec, require
from vivit_knn.train import optim, sharding

INPUT = (4, 24, 24, 3)
SYNTHETIC = {"vivit": "synthetic_tiny", "timesformer": "synthetic_timesformer",
             "xvit": "synthetic_xvit", "student": "synthetic_tsd", "cast": "synthetic_cast"}


class ToyModel(nn.Module):
  """Mean-pooled pixels through one Dense layer named `toy_head`, after a `toy_stem` scale."""

  num_classes: int
  width: int

  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    scale = self.param("toy_stem", nn.initializers.ones, (1,))
    pooled = jnp.mean(x, axis=(1, 2, 3)) * scale
    hidden = nn.Dense(self.width, name="toy_body")(pooled)
    return nn.Dense(self.num_classes, name="toy_head")(hidden), {}


def _toy_check(cfg, input_shape, field):
  del input_shape
  require(cfg.toy_width >= 1, f"{field}.toy_width", f"must be >= 1, got {cfg.toy_width}")


TOY = ModelFamily(
    name="toy",
    build=lambda cfg, num_classes: ToyModel(num_classes, cfg.toy_width),
    defaults=lambda: {"toy_width": 8},
    check=_toy_check,
    key_counts=lambda cfg, t, s: {"model.attention": (t * s, attention_spec(cfg.attention))},
    stem_names=frozenset({"toy_stem"}),
    param_axes=((r"toy_body/kernel$", (None, "mlp")),),
)


@pytest.fixture
def toy_family(monkeypatch):
  monkeypatch.setitem(registry.FAMILIES, "toy", TOY)


def test_a_registered_family_gets_its_keys_checks_and_builder(toy_family):
  del toy_family
  config = tiny_config("spacetime", knn=False)
  assert config_lib.base_config().model.toy_width == 8  # the schema now knows its key
  config.model.name = "toy"
  config.model.toy_width = 3
  config_lib.validate(config, INPUT)
  model = registry.build_model(config.model, 5)
  params = model.init(jax.random.key(0), jnp.zeros((1,) + INPUT))["params"]
  logits, _ = model.apply({"params": params}, jnp.ones((2,) + INPUT))
  assert logits.shape == (2, 5)
  assert params["toy_body"]["kernel"].shape == (3, 3)

  config.model.toy_width = 0
  with pytest.raises(ValueError, match=r"model\.toy_width"):
    config_lib.validate(config, INPUT)
  config.model.toy_width = 3
  # Its key counts feed the attention checks: 2 tubelet times x 9 patches = 18 keys.
  config.model.attention.update(kind="knn", knn_k=19.0)
  with pytest.raises(ValueError, match=r"model\.attention\.knn_k.*18 tokens"):
    config_lib.validate(config, INPUT)
  assert registry.attention_key_counts(config.model, INPUT) == {
      "model.attention": (18, AttentionSpec("knn", 19))}


def test_a_registered_family_adds_its_stem_and_sharding_rules(toy_family):
  del toy_family
  assert "toy_stem" in registry.stem_names()
  assert (r"toy_body/kernel$", (None, "mlp")) in registry.param_axes()
  # Rules every family shares come first, so a family cannot shadow them.
  assert registry.param_axes()[0][0].endswith("(query|key|value)/kernel$")


def test_keys_of_another_family_are_rejected():
  config = tiny_config()
  config.model.xvit_segment_frames = 2
  with pytest.raises(ValueError,
                     match=r"model\.xvit_segment_frames=2 cannot take effect.*'xvit' only"):
    config_lib.validate(config, INPUT)


def test_unknown_family_names_the_field():
  config = tiny_config()
  config.model.name = "resnet3d"
  with pytest.raises(ValueError, match=r"model\.name.*vivit"):
    config_lib.validate(config, INPUT)


def test_schema_is_the_common_block_plus_every_family_s_own_keys():
  model = config_lib.base_config().model
  own = registry.default_config_keys()
  for spec in registry.FAMILIES.values():
    for key, value in spec.defaults().items():
      assert key in model and own[key] == value, (spec.name, key)
  # Fresh objects per call: editing one config's nested block leaves the next one alone.
  model.spatial_transformer.attention.kind = "knn"
  assert config_lib.base_config().model.spatial_transformer.attention.kind == "dense"


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_every_family_builds_and_its_stem_is_layer_zero(name):
  config = load_config(SYNTHETIC[name])
  assert config.model.name == name
  shape = (config.dataset.num_frames, config.dataset.image_size, config.dataset.image_size, 3)
  config_lib.check_model(config.model, shape)
  model = registry.build_model(config.model, 4)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + shape)))
  params = params["params"]
  ids = optim._layers(params)[0]
  flat = {jax.tree_util.keystr(p): l for p, l in jax.tree_util.tree_leaves_with_path(ids)}
  stems = {k: l for k, l in flat.items() if any(f"'{n}'" in k for n in registry.family(
      name).stem_names)}
  assert stems and all(l == 0 for l in stems.values()), stems
  # Every attention projection gets the shared (embed, heads, kv) axes.
  kernels = [(p, leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(params)
             if jax.tree_util.keystr(p).endswith("['query']['kernel']")]
  assert kernels
  for path, leaf in kernels:
    key = "/".join(str(getattr(k, "key", k)) for k in path)
    assert sharding.logical_axes(key, len(leaf.shape)) == ("embed", "heads", "kv")
