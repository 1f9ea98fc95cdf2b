"""Flax ResNet vs a numpy conv/BN/ReLU reference, and the torchvision key converter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.published import to_torchvision
from vivit_knn.models import resnet
from vivit_knn.weights import torchvision_resnet as tvr
from vivit_knn.weights.tree import UnmatchedKeysError

WIDTH, CLASSES, SIZE = 4, 5, 32


def torchvision_state(depth, width=WIDTH, classes=CLASSES, seed=0):
  """A random state dict with torchvision's keys and layouts ([O, I, kh, kw] convs)."""
  rng = np.random.default_rng(seed)
  state = {}

  def conv(name, o, i, k):
    std = (2 / (i * k * k)) ** 0.5
    state[f"{name}.weight"] = rng.normal(0, std, (o, i, k, k)).astype(np.float32)

  def bn(name, c):
    state[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    state[f"{name}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
    state[f"{name}.running_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
    state[f"{name}.running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
    state[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

  design, blocks = resnet.DEPTHS[depth]
  expansion = resnet.EXPANSION[design]
  conv("conv1", width, 3, 7)
  bn("bn1", width)
  inplanes = width
  for stage, count in enumerate(blocks):
    planes = width * 2 ** stage
    for j in range(count):
      p = f"layer{stage + 1}.{j}"
      stride = 2 if stage and not j else 1
      if design == "basic":
        conv(f"{p}.conv1", planes, inplanes, 3), bn(f"{p}.bn1", planes)
        conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
      else:
        conv(f"{p}.conv1", planes, inplanes, 1), bn(f"{p}.bn1", planes)
        conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
        conv(f"{p}.conv3", planes * expansion, planes, 1), bn(f"{p}.bn3", planes * expansion)
      if stride != 1 or inplanes != planes * expansion:
        conv(f"{p}.downsample.0", planes * expansion, inplanes, 1)
        bn(f"{p}.downsample.1", planes * expansion)
      inplanes = planes * expansion
  state["fc.weight"] = rng.normal(0, 0.1, (classes, inplanes)).astype(np.float32)
  state["fc.bias"] = rng.normal(0, 0.1, classes).astype(np.float32)
  return state


# ---- numpy reference, NCHW like torchvision ----

def _conv(x, w, stride, pad):
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  k = w.shape[-1]
  ho = (x.shape[2] - k) // stride + 1
  wo = (x.shape[3] - k) // stride + 1
  out = np.zeros((x.shape[0], w.shape[0], ho, wo))
  for i in range(k):
    for j in range(k):
      patch = x[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
      out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
  return out


def _bn(x, s, name):
  shape = (1, -1, 1, 1)
  mean, var = s[f"{name}.running_mean"].reshape(shape), s[f"{name}.running_var"].reshape(shape)
  return ((x - mean) / np.sqrt(var + 1e-5) * s[f"{name}.weight"].reshape(shape)
          + s[f"{name}.bias"].reshape(shape))


def _maxpool(x):
  x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  ho, wo = (x.shape[2] - 3) // 2 + 1, (x.shape[3] - 3) // 2 + 1
  return np.max([x[:, :, i:i + 2 * ho:2, j:j + 2 * wo:2] for i in range(3) for j in range(3)], 0)


def _np_resnet(s, depth, x):
  relu = lambda v: np.maximum(v, 0)
  design, blocks = resnet.DEPTHS[depth]
  x = _maxpool(relu(_bn(_conv(x, s["conv1.weight"], 2, 3), s, "bn1")))
  for stage, count in enumerate(blocks):
    for j in range(count):
      p = f"layer{stage + 1}.{j}"
      stride = 2 if stage and not j else 1
      if design == "basic":
        y = relu(_bn(_conv(x, s[f"{p}.conv1.weight"], stride, 1), s, f"{p}.bn1"))
        y = _bn(_conv(y, s[f"{p}.conv2.weight"], 1, 1), s, f"{p}.bn2")
      else:
        y = relu(_bn(_conv(x, s[f"{p}.conv1.weight"], 1, 0), s, f"{p}.bn1"))
        y = relu(_bn(_conv(y, s[f"{p}.conv2.weight"], stride, 1), s, f"{p}.bn2"))
        y = _bn(_conv(y, s[f"{p}.conv3.weight"], 1, 0), s, f"{p}.bn3")
      if f"{p}.downsample.0.weight" in s:
        x = _bn(_conv(x, s[f"{p}.downsample.0.weight"], stride, 0), s, f"{p}.downsample.1")
      x = relu(x + y)
  layer4 = x
  logits = x.mean((2, 3)) @ s["fc.weight"].T + s["fc.bias"]
  return logits, layer4


@pytest.mark.parametrize("depth", [18, 50])
def test_flax_resnet_matches_numpy_reference(depth):
  state = torchvision_state(depth)
  variables = tvr.convert_torchvision_resnet(state)
  model = resnet.ResNet(num_classes=CLASSES, depth=depth, width=WIDTH)
  x = np.random.default_rng(1).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
  # The converted tree is exactly the model's tree.
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.asarray(x)))
  assert jax.tree.map(lambda a: a.shape, variables) == jax.tree.map(lambda a: a.shape,
                                                                     dict(abstract))
  logits, feats = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.asarray(x))
  want_logits, want_layer4 = _np_resnet(state, depth, x.transpose(0, 3, 1, 2).astype(np.float64))
  np.testing.assert_allclose(np.asarray(logits), want_logits, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(feats["layer4"]), want_layer4.transpose(0, 2, 3, 1),
                             rtol=1e-4, atol=1e-4)
  assert feats["layer4"].shape[1] == resnet.feature_size(SIZE)
  assert feats["layer4"].shape[-1] == resnet.stage_channels(depth, WIDTH)[-1]


@pytest.mark.parametrize("depth", [18, 50])
def test_converter_round_trips_a_torchvision_npz(tmp_path, depth):
  state = torchvision_state(depth)
  path = tmp_path / f"resnet{depth}.npz"
  np.savez(path, **{f"module.{k}": v for k, v in state.items()})  # a DataParallel dump
  variables, found_depth = tvr.load_torchvision_resnet(str(path))
  assert found_depth == depth
  back = to_torchvision(variables)
  want = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  assert sorted(back) == sorted(want)
  for key, value in want.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  again = tvr.convert_torchvision_resnet(back)
  jax.tree.map(np.testing.assert_array_equal, again, variables)


def test_converter_rejects_foreign_keys_and_infers_depth():
  state = torchvision_state(18)
  state["layer1.0.se.fc.weight"] = np.zeros((2, 2), np.float32)
  with pytest.raises(UnmatchedKeysError, match="layer1.0.se.fc.weight"):
    tvr.convert_torchvision_resnet(state)
  assert tvr.infer_depth({k: None for k in torchvision_state(101, width=1)}) == 101
  assert tvr.infer_depth({k: None for k in torchvision_state(34, width=1)}) == 34
