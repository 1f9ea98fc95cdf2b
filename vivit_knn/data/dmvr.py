"""The DMVR/scenic video record: a ``tf.train.SequenceExample`` of JPEG frames.

Feature list ``image/encoded`` holds one JPEG per frame; the context holds
``clip/label/index`` (int64) and optionally ``clip/label/text`` and
``video/filename``.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
from google.protobuf import message

from vivit_knn.data import skips

FRAMES_KEY = "image/encoded"
LABEL_KEY = "clip/label/index"
TEXT_KEY = "clip/label/text"
FILENAME_KEY = "video/filename"


def make_sequence_example(jpegs: Sequence[bytes], label: int,
                          label_text: str = "",
                          filename: str = "") -> bytes:
  """Serialized DMVR record of ``jpegs`` with class ``label``."""
  example = tf.train.SequenceExample()
  context = example.context.feature
  context[LABEL_KEY].int64_list.value.append(int(label))
  if label_text:
    context[TEXT_KEY].bytes_list.value.append(label_text.encode())
  if filename:
    context[FILENAME_KEY].bytes_list.value.append(filename.encode())
  frames = example.feature_lists.feature_list[FRAMES_KEY].feature
  for jpeg in jpegs:
    frames.add().bytes_list.value.append(jpeg)
  return example.SerializeToString()


class _LazyFrames(Sequence):
  """The encoded frames of a parsed record; bytes are copied on access only."""

  def __init__(self, features):
    self._features = features

  def __len__(self) -> int:
    return len(self._features)

  def __getitem__(self, i):
    values = self._features[i].bytes_list.value
    return values[0] if values else b""


def parse_sequence_example(raw: bytes,
                           source: str) -> tuple[Sequence[bytes], int]:
  """``(JPEG frames, label)`` of a serialized DMVR record.

  The frames are a lazy sequence, so picking a few of a long video copies
  only those.

  Raises:
    BadVideoError: ``corrupt`` for an unparsable record or one without a
      label, ``zero_frames`` for one without frames.
  """
  try:
    example = tf.train.SequenceExample.FromString(raw)
  except message.DecodeError as err:
    raise skips.BadVideoError(skips.CORRUPT, source,
                              f"not a SequenceExample: {err}") from err
  labels = example.context.feature[LABEL_KEY].int64_list.value
  if not labels:
    raise skips.BadVideoError(skips.CORRUPT, source, f"no {LABEL_KEY}")
  frames = _LazyFrames(
      example.feature_lists.feature_list[FRAMES_KEY].feature)
  if not frames:
    raise skips.BadVideoError(skips.ZERO_FRAMES, source)
  return frames, int(labels[0])
