"""MHCA: with Q = K = 0 each head attends with the quadratic relative-position kernel."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vivit_knn.models import mhca

GRID = (5, 6)  # rows x cols of patches
NUM_PATCHES = GRID[0] * GRID[1]
NUM_TOKENS = 1 + NUM_PATCHES  # CLS first
DELTAS = np.array([[1.0, -1.0], [0.0, 2.0]], np.float32)  # (dx, dy) per head
ALPHAS = np.array([2.0, 0.5], np.float32)


def _np_weights(delta, alpha):
  """softmax over keys of -alpha_h (|d|^2 - 2 Delta_h . d), zero for CLS rows/columns."""
  ys, xs = np.meshgrid(np.arange(GRID[0]), np.arange(GRID[1]), indexing="ij")
  pos = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float64)
  d = pos[None, :, :] - pos[:, None, :]
  logits = np.zeros((len(alpha), NUM_TOKENS, NUM_TOKENS))
  for h in range(len(alpha)):
    logits[h, 1:, 1:] = -alpha[h] * ((d ** 2).sum(-1) - 2 * d @ delta[h])
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


class _MHCA(nn.Module):
  """One MHCA layer (CLS first) as its own module."""

  num_heads: int

  @nn.compact
  def __call__(self, x, *, grid):
    return mhca.mhca_attention(x, num_heads=self.num_heads, grid=grid)


def _identity_mhca_params(params, heads):
  """Q = K = 0; value and output projections copy one-hot token ids, so outputs are weights."""
  p = jax.tree.map(np.zeros_like, jax.device_get(params))
  attn = p["MultiHeadDotProductAttention_0"]
  for h in range(heads):
    for k in range(NUM_TOKENS):
      attn["value"]["kernel"][h * NUM_TOKENS + k, h, k] = 1.0
      attn["out"]["kernel"][h, k, h * NUM_TOKENS + k] = 1.0
  p["RelativePosition_0"]["delta"] = DELTAS
  p["RelativePosition_0"]["alpha"] = ALPHAS
  return p


def test_zero_qk_mhca_reproduces_the_quadratic_kernel():
  heads = len(ALPHAS)
  layer = _MHCA(num_heads=heads)
  x = jnp.asarray(np.tile(np.eye(NUM_TOKENS, dtype=np.float32), (1, heads))[None])
  params = layer.init(jax.random.key(0), x, grid=GRID)["params"]
  params = _identity_mhca_params(params, heads)
  out = np.asarray(layer.apply({"params": params}, x, grid=GRID))[0]
  weights = out.reshape(NUM_TOKENS, heads, NUM_TOKENS).transpose(1, 0, 2)  # [H, q, k]
  np.testing.assert_allclose(weights, _np_weights(DELTAS, ALPHAS), rtol=1e-5, atol=1e-6)

  # An interior query: the peak sits at q + Delta_h, one step off costs a factor exp(-alpha_h).
  qy, qx = 2, 2
  q = 1 + qy * GRID[1] + qx
  for h in range(heads):
    patch_w = weights[h, q, 1:].reshape(GRID)
    dx, dy = DELTAS[h].astype(int)
    assert np.unravel_index(np.argmax(patch_w), GRID) == (qy + dy, qx + dx)
    ratio = patch_w[qy + dy, qx + dx + 1] / patch_w[qy + dy, qx + dx]
    np.testing.assert_allclose(ratio, np.exp(-ALPHAS[h]), rtol=1e-4)
  # The sharper head (larger alpha) puts more mass on its peak.
  peaks = [weights[h, q, 1:].max() for h in range(heads)]
  assert peaks[0] > peaks[1]
  # CLS gets no relative term: with Q = K = 0 its row is uniform.
  np.testing.assert_allclose(weights[:, 0], 1.0 / NUM_TOKENS, rtol=1e-5)


def test_bias_repeats_over_frames_and_init_is_a_local_grid():
  offsets = mhca.local_offsets(6)
  np.testing.assert_array_equal(offsets, [[-1, -0.5], [0, -0.5], [1, -0.5],
                                          [-1, 0.5], [0, 0.5], [1, 0.5]])
  np.testing.assert_array_equal(mhca.local_offsets(9)[4], [0, 0])
  np.testing.assert_allclose(mhca.local_offsets(4).mean(0), 0)
  bias = np.asarray(mhca.quadratic_position_bias(offsets, np.ones(6), mhca.patch_positions(
      (3, 4), num_frames=2), num_prefix=1))
  assert bias.shape == (6, 25, 25)
  np.testing.assert_array_equal(bias[:, 0], 0)
  np.testing.assert_array_equal(bias[:, :, 0], 0)
  # Frame 2's patches see the same spatial offsets as frame 1's.
  np.testing.assert_array_equal(bias[:, 1:13, 1:13], bias[:, 13:, 13:])
  np.testing.assert_array_equal(bias[:, 1:13, 1:13], bias[:, 1:13, 13:])
