"""Small datasets on disk for tests and benchmarks.

Video files: :func:`write_video` writes frames with PyAV.

Video folders: genuine video files in the UCF101 and HMDB51 layouts
with their split files. Each class has its own colour and the bar in every
clip moves, so labels are recoverable and temporal sampling is visible.

DMVR records: :func:`export_synthetic` writes the built-in synthetic dataset
as TFRecord shards of real JPEG frames, to exercise the whole real-data path
(shards, metadata, JPEG decoding, processors) on a task with a known answer.
"""

from __future__ import annotations

import dataclasses
import os

import av
import ml_collections
import numpy as np
import tensorflow as tf
from PIL import Image

from vivit_knn.data import splits, synthetic, tfrecord
from vivit_knn.data.convert import encode_jpeg, shards

UCF_CLASSES = ("ApplyLipstick", "Biking", "Diving")
HMDB_CLASSES = ("brush_hair", "cartwheel", "chew")
_COLOURS = ((220, 40, 40), (40, 220, 40), (40, 40, 220), (220, 220, 40),
            (40, 220, 220), (220, 40, 220))
# Examples per synthetic generate() call: enough to amortise it, few enough
# to stay small.
_CHUNK = 64
_CODECS = {".avi": "mpeg4", ".mp4": "libx264", ".mkv": "libx264",
           ".webm": "libvpx-vp9"}


def write_video(path: str, frames: np.ndarray, fps: int = 25,
                codec: str | None = None) -> None:
  """Writes uint8 ``[N, H, W, 3]`` RGB frames to a video file.

  The codec defaults by extension (``.avi`` -> MPEG-4 part 2, the UCF101 and
  HMDB51 codec family; ``.mp4`` -> H.264). ``N = 0`` writes a valid file
  with an empty video stream. Even ``H`` and ``W`` are required by the
  4:2:0 pixel format.
  """
  frames = np.asarray(frames, np.uint8)
  _, height, width, _ = frames.shape
  codec = codec or _CODECS.get(os.path.splitext(path)[1].lower(), "mpeg4")
  with av.open(path, "w") as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    container.start_encoding()
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, "rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def synthetic_frames(num_frames: int, height: int, width: int, label: int,
                     seed: int = 0) -> np.ndarray:
  """uint8 ``[T, H, W, 3]``: a class-coloured background with a moving bar.

  Frame ``t`` has its bar at column ``2 t`` (wrapping) and a brightness ramp
  over time, so any two frames differ.
  """
  rng = np.random.default_rng(seed)
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  frames[:] = np.asarray(_COLOURS[label % len(_COLOURS)], np.uint8)
  bar = max(2, width // 8)
  row = int(rng.integers(0, max(1, height - height // 3)))
  for t in range(num_frames):
    col = (2 * t) % max(1, width - bar)
    frames[t, row:row + height // 3, col:col + bar] = 255
    frames[t, :4, :] = (t * 7) % 256
  return frames


def textured_frames(num_frames: int, height: int, width: int, label: int,
                    seed: int = 0) -> np.ndarray:
  """uint8 ``[T, H, W, 3]`` with camera-like content for benchmarks.

  A smooth random texture tinted by the class colour pans 3 px per frame,
  with mild sensor noise: JPEG sizes and decode costs close to real
  256p footage, unlike flat synthetic frames.
  """
  rng = np.random.default_rng(seed)
  pan = 3 * num_frames
  coarse = rng.integers(0, 256, (height // 8 + 1, (width + pan) // 8 + 1, 3))
  texture = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize(
      (width + pan, height), Image.BICUBIC), np.float32)
  tint = np.asarray(_COLOURS[label % len(_COLOURS)], np.float32)
  texture = 0.6 * texture + 0.4 * tint
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  for t in range(num_frames):
    noisy = texture[:, 3 * t:3 * t + width] + rng.normal(0, 3, (height, width,
                                                                3))
    frames[t] = np.clip(noisy, 0, 255)
  return frames


@dataclasses.dataclass
class Layout:
  """Where a written layout's pieces are."""

  root: str
  splits_dir: str
  class_names: tuple[str, ...]
  train: list[str]  # Paths relative to root.
  test: list[str]


def write_ucf101(root: str, classes=UCF_CLASSES, train_per_class: int = 3,
                 test_per_class: int = 2, num_frames: int = 24,
                 size: tuple[int, int] = (48, 64), ext: str = ".avi",
                 split: int = 1, textured: bool = False) -> Layout:
  """UCF101 layout: ``<Class>/v_<Class>_gXX_c01<ext>`` + ``ucfTrainTestlist``.

  Group ``g`` of each class is a separate video; the first
  ``train_per_class`` groups are train, the rest test. Video ``k`` has
  ``num_frames + 3 k`` frames; ``textured`` uses :func:`textured_frames`.
  """
  make_frames = textured_frames if textured else synthetic_frames
  lists = os.path.join(root, splits.UCF101_SPLITS_DIR)
  os.makedirs(lists, exist_ok=True)
  train, test = [], []
  for label, name in enumerate(classes):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for g in range(1, train_per_class + test_per_class + 1):
      rel = f"{name}/v_{name}_g{g:02d}_c01{ext}"
      write_video(os.path.join(root, rel), make_frames(
          num_frames + 3 * g, *size, label, seed=g))
      (train if g <= train_per_class else test).append(rel)
  with open(os.path.join(lists, "classInd.txt"), "w") as f:
    f.writelines(f"{i + 1} {name}\n" for i, name in enumerate(classes))
  with open(os.path.join(lists, f"trainlist0{split}.txt"), "w") as f:
    f.writelines(f"{rel} {classes.index(rel.split('/')[0]) + 1}\n"
                 for rel in train)
  with open(os.path.join(lists, f"testlist0{split}.txt"), "w") as f:
    f.writelines(f"{rel}\n" for rel in test)
  return Layout(root, lists, tuple(classes), train, test)


def write_hmdb51(root: str, classes=HMDB_CLASSES, train_per_class: int = 3,
                 test_per_class: int = 2, unused_per_class: int = 1,
                 num_frames: int = 24, size: tuple[int, int] = (48, 64),
                 split: int = 1) -> Layout:
  """HMDB51 layout: ``<class>/<name>.avi`` + ``<class>_test_split<k>.txt``.

  Each class also has ``unused_per_class`` videos marked 0 (in no split).
  """
  lists = os.path.join(root, splits.HMDB51_SPLITS_DIR)
  os.makedirs(lists, exist_ok=True)
  train, test = [], []
  for label, name in enumerate(classes):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    lines = []
    total = train_per_class + test_per_class + unused_per_class
    for k in range(total):
      video = f"{name}_clip_{k}.avi"
      write_video(os.path.join(root, name, video), synthetic_frames(
          num_frames + 2 * k, *size, label, seed=k))
      mark = 1 if k < train_per_class else (
          2 if k < train_per_class + test_per_class else 0)
      lines.append(f"{video} {mark}\n")
      if mark == 1:
        train.append(f"{name}/{video}")
      elif mark == 2:
        test.append(f"{name}/{video}")
    with open(os.path.join(lists, f"{name}_test_split{split}.txt"), "w") as f:
      f.writelines(lines)
  return Layout(root, lists, tuple(classes), train, test)


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
      frames = [encode_jpeg(f, quality) for f in clip]
      name = dataset.info.class_names[label]
      yield ("ok", tfrecord.make_sequence_example(frames, int(label), name,
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
  meta = {"format": tfrecord.FORMAT, "version": tfrecord.VERSION,
          "source": "synthetic", "split": None, "short_side": 0,
          "jpeg_quality": jpeg_quality,
          "class_names": list(dataset.info.class_names), "splits": {}}
  sizes = {"train": dataset.info.num_train_examples,
           "eval": dataset.info.num_eval_examples}
  for split, name in (("train", "train"), ("eval", "test")):
    names = shards.shard_names(name, num_shards)
    for shard, ids in zip(names, shards.partition(sizes[split], num_shards)):
      shards.write_shard(out_dir, shard, _split_records(dataset, split, ids, jpeg_quality))
    meta["splits"][name] = shards.split_stats(out_dir, names)
  shards.write_sidecars(out_dir, meta)
  return meta
