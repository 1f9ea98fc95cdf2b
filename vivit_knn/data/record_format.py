"""The DMVR record and TFRecord framing, written without TensorFlow.

A record is a ``tensorflow.SequenceExample`` (the DMVR/scenic video record):
feature list ``image/encoded`` holds one JPEG per frame; the context holds
``clip/label/index`` (int64) and optionally ``clip/label/text``, ``video/filename``
and label sets (``clip/label/<set>/index`` and ``/text``). A TFRecord file is a
sequence of ``uint64 length | uint32 masked crc32c(length) | data | uint32 masked
crc32c(data)``. The message classes are made here from TensorFlow's
``example.proto`` definitions, so the converter's workers need not import it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import google_crc32c
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

FRAMES_KEY = "image/encoded"
LABEL_KEY = "clip/label/index"
TEXT_KEY = "clip/label/text"
FILENAME_KEY = "video/filename"
# The converter's sidecar files beside the shards.
METADATA_FILE = "metadata.json"
CLASSES_FILE = "classes.txt"

_F = descriptor_pb2.FieldDescriptorProto


def _message(file: descriptor_pb2.FileDescriptorProto, name: str, fields) -> None:
  """Adds message ``name`` with ``(name, number, type, label, type_name)`` fields."""
  message = file.message_type.add(name=name)
  for field_name, number, kind, label, type_name in fields:
    message.field.add(name=field_name, number=number, type=kind, label=label,
                      type_name=type_name or None)


def _map(file, name: str, field: str, value_type: str) -> None:
  """Adds message ``name`` with field 1 ``map<string, value_type> field``."""
  message = file.message_type.add(name=name)
  entry = message.nested_type.add(name=field.capitalize() + "Entry")
  entry.options.map_entry = True
  entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
  entry.field.add(name="value", number=2, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
                  type_name=value_type)
  message.field.add(name=field, number=1, type=_F.TYPE_MESSAGE, label=_F.LABEL_REPEATED,
                    type_name=f".tensorflow.{name}.{entry.name}")


def _sequence_example_class():
  file = descriptor_pb2.FileDescriptorProto(name="vivit_knn/sequence_example.proto",
                                            package="tensorflow", syntax="proto3")
  repeated, optional = _F.LABEL_REPEATED, _F.LABEL_OPTIONAL
  _message(file, "BytesList", [("value", 1, _F.TYPE_BYTES, repeated, "")])
  _message(file, "FloatList", [("value", 1, _F.TYPE_FLOAT, repeated, "")])
  _message(file, "Int64List", [("value", 1, _F.TYPE_INT64, repeated, "")])
  feature = file.message_type.add(name="Feature")
  feature.oneof_decl.add(name="kind")
  for name, number, type_name in (("bytes_list", 1, "BytesList"), ("float_list", 2, "FloatList"),
                                  ("int64_list", 3, "Int64List")):
    feature.field.add(name=name, number=number, type=_F.TYPE_MESSAGE, label=optional,
                      type_name=f".tensorflow.{type_name}", oneof_index=0)
  _map(file, "Features", "feature", ".tensorflow.Feature")
  _message(file, "FeatureList", [("feature", 1, _F.TYPE_MESSAGE, repeated, ".tensorflow.Feature")])
  _map(file, "FeatureLists", "feature_list", ".tensorflow.FeatureList")
  _message(file, "SequenceExample", [
      ("context", 1, _F.TYPE_MESSAGE, optional, ".tensorflow.Features"),
      ("feature_lists", 2, _F.TYPE_MESSAGE, optional, ".tensorflow.FeatureLists")])
  # A pool of our own: TensorFlow's classes of the same names may be loaded too.
  pool = descriptor_pool.DescriptorPool()
  pool.Add(file)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.SequenceExample"))


SequenceExample = _sequence_example_class()


def label_set_keys(label_set: str) -> tuple[str, str]:
  """``(index key, text key)`` of a further label set, e.g. ``clip/label/verb/index``."""
  return f"clip/label/{label_set}/index", f"clip/label/{label_set}/text"


def make_sequence_example(jpegs: Sequence[bytes], label: int, label_text: str = "",
                          filename: str = "",
                          label_sets: Sequence[tuple[str, int, str]] = ()) -> bytes:
  """Serialized DMVR record of ``jpegs`` with class ``label``.

  ``label_sets`` holds further labels as ``(set, index, text)``, stored under
  :func:`label_set_keys`. The bytes are deterministic: the same arguments give
  the same record on every run and machine.
  """
  example = SequenceExample()
  context = example.context.feature
  context[LABEL_KEY].int64_list.value.append(int(label))
  if label_text:
    context[TEXT_KEY].bytes_list.value.append(label_text.encode())
  if filename:
    context[FILENAME_KEY].bytes_list.value.append(filename.encode())
  for label_set, index, text in label_sets:
    index_key, text_key = label_set_keys(label_set)
    context[index_key].int64_list.value.append(int(index))
    if text:
      context[text_key].bytes_list.value.append(text.encode())
  frames = example.feature_lists.feature_list[FRAMES_KEY].feature
  for jpeg in jpegs:
    frames.add().bytes_list.value.append(jpeg)
  # Map fields (the context) serialize in hash order unless asked otherwise.
  return example.SerializeToString(deterministic=True)


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC-32C of ``data``."""
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
  """``data`` framed as one TFRecord: length, its CRC, the data, the data's CRC."""
  length = struct.pack("<Q", len(data))
  return b"".join((length, struct.pack("<I", masked_crc32c(length)), data,
                   struct.pack("<I", masked_crc32c(data))))
