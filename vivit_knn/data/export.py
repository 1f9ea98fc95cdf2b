"""Writes the built-in synthetic dataset as DMVR TFRecords (real JPEG frames).

Useful to exercise the whole real-data path (shards, metadata, JPEG decoding,
processors) on a task with a known answer.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import tensorflow as tf

from vivit_knn.data import dmvr, jpeg, metadata, shards, synthetic

# Enough examples per generate() call to amortise it, few enough to stay small.
_CHUNK = 64


def _to_uint8(clips: np.ndarray) -> np.ndarray:
  """Synthetic clips in [-1, 1] -> uint8 pixels."""
  return np.clip(np.round((clips + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _split_records(dataset: synthetic.SyntheticMotionDataset, split: str,
                   ids, quality: int):
  """Yields ``('ok', record)`` for examples ``ids`` of ``split``."""
  ids = list(ids)
  for start in range(0, len(ids), _CHUNK):
    chunk = ids[start:start + _CHUNK]
    clips, labels = dataset.generate(split, chunk)
    for i, clip, label in zip(chunk, _to_uint8(clips), labels):
      frames = [jpeg.encode_jpeg(f, quality) for f in clip]
      name = dataset.info.class_names[label]
      yield ("ok", dmvr.make_sequence_example(frames, int(label), name,
                                              f"{split}/{i:06d}"))


def export_synthetic(out_dir: str,
                     config: ml_collections.ConfigDict | None = None,
                     num_shards: int = 2, jpeg_quality: int = 95) -> dict:
  """Exports the synthetic dataset's train and eval splits to ``out_dir``.

  The eval split is written as ``test.tfrecord-*`` (the converter's name).
  Returns the metadata written next to the shards.
  """
  dataset = synthetic.SyntheticMotionDataset(config)
  tf.io.gfile.makedirs(out_dir)
  meta = {"format": metadata.FORMAT, "version": metadata.VERSION,
          "source": "synthetic", "split": None, "short_side": 0,
          "jpeg_quality": jpeg_quality,
          "class_names": list(dataset.info.class_names), "splits": {}}
  sizes = {"train": dataset.info.num_train_examples,
           "eval": dataset.info.num_eval_examples}
  for split, name in (("train", "train"), ("eval", "test")):
    meta["splits"][name] = shards.write_split(
        out_dir, name, sizes[split], num_shards,
        lambda ids, split=split: _split_records(dataset, split, ids,
                                                jpeg_quality))
  metadata.write_class_names(out_dir, dataset.info.class_names)
  metadata.write_json(os.path.join(out_dir, metadata.METADATA_FILE), meta)
  return meta
