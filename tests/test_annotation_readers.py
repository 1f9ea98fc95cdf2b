"""The Kinetics, Something-Something v2 and EPIC-KITCHENS-100 annotation readers
on datasets written in their published layouts (see ``published_datasets``).

Expected values are computed here from the written files with ``csv`` and
``json``, independently of the readers.
"""

import csv
import io
import json
import os

import av
import numpy as np
import pytest
from PIL import Image

import published_datasets as published
from vivit_knn.data import video_io
from vivit_knn.data.convert import ek100, kinetics, ssv2


@pytest.fixture(scope="module")
def kinetics_data(tmp_path_factory):
  """A Kinetics layout shared by the tests that only read it."""
  return published.write_kinetics(str(tmp_path_factory.mktemp("kinetics")))


@pytest.fixture(scope="module")
def ssv2_data(tmp_path_factory):
  """A Something-Something v2 layout shared by the tests that only read it."""
  return published.write_ssv2(str(tmp_path_factory.mktemp("ssv2")))


@pytest.fixture(scope="module")
def ek100_data(tmp_path_factory):
  """An EPIC-KITCHENS-100 layout shared by the tests that only read it."""
  return published.write_ek100(str(tmp_path_factory.mktemp("ek100")))


def _csv_rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _append(path, line):
  """Appends ``line``; returns its 1-based line number."""
  with open(path, "a") as f:
    f.write(line + "\n")
  with open(path) as f:
    return len(f.read().splitlines())


def _one_line_error(error_type, call, *fragments):
  with pytest.raises(error_type) as info:
    call()
  message = str(info.value)
  assert "\n" not in message, message
  for fragment in fragments:
    assert fragment in message, message
  return message


def _clip(row):
  return "{}_{:06d}_{:06d}".format(row["youtube_id"], int(float(row["time_start"])),
                                   int(float(row["time_end"])))


# Kinetics.


def _check_kinetics(listing, data, train_csv, validation_csvs):
  """The listing against the CSV files as parsed here."""
  train_rows = _csv_rows(train_csv)
  class_names = sorted({row["label"] for row in train_rows})
  assert listing.class_names == class_names == data.class_names
  for split, rows in (("train", train_rows), ("test", validation_csvs)):
    missing = set(data.missing[split])
    expected = [row for row in rows if _clip(row) not in missing]
    examples = listing.splits[split]
    assert len(examples) == len(rows) - len(data.missing[split])
    assert [e.name for e in examples] == [_clip(row) for row in expected]
    for example, row in zip(examples, expected):
      assert example.label_text == row["label"]
      assert example.label == class_names.index(row["label"])
      assert example.label_sets == ()
      if example.name in data.untrimmed:
        assert example.path == data.untrimmed[example.name]
        assert (example.start_s, example.end_s) == (float(row["time_start"]),
                                                     float(row["time_end"]))
      else:
        assert example.path == data.trimmed[example.name]
        assert example.start_s is None and example.end_s is None
    assert listing.missing[split] == [
        os.path.join(data.root, clip + ".mp4") for clip in data.missing[split]]


def test_kinetics_splits_labels_and_missing(kinetics_data):
  data = kinetics_data
  listing = kinetics.read(data.annotations, data.root)
  _check_kinetics(listing, data, data.csv_files["train"],
                  _csv_rows(data.csv_files["validate"]))
  # The fixture covers both kinds of video in both splits.
  for split in ("train", "test"):
    kinds = {e.start_s is None for e in listing.splits[split]}
    assert kinds == {True, False}
    assert data.missing[split]
  assert listing.label_sets == {}


def test_kinetics_trimmed_clip_wins_over_untrimmed_video(kinetics_data):
  listing = kinetics.read(kinetics_data.annotations, kinetics_data.root)
  by_name = {e.name: e for e in listing.splits["train"]}
  assert kinetics_data.shadowed
  for clip, long_video in kinetics_data.shadowed.items():
    assert by_name[clip].path == kinetics_data.trimmed[clip] != long_video
    assert by_name[clip].start_s is None


def test_kinetics_test_csv_is_not_converted(kinetics_data):
  listing = kinetics.read(kinetics_data.annotations, kinetics_data.root)
  test_ids = {row["youtube_id"] for row in _csv_rows(kinetics_data.csv_files["test"])}
  assert test_ids
  converted = [e.name for split in listing.splits.values() for e in split]
  assert not any(name.startswith(tuple(test_ids)) for name in converted)
  assert any("test.csv" in note and "not converted" in note for note in listing.notes)


@pytest.mark.parametrize("prefix,is_cc,validation_name", [
    ("", True, "val"), ("", True, "validation"), ("kinetics_400_", True, "validate"),
    ("kinetics700_2020_", False, "validate")])
def test_kinetics_file_names_and_columns(tmp_path, prefix, is_cc, validation_name):
  data = published.write_kinetics(str(tmp_path), prefix=prefix, is_cc=is_cc)
  validation = os.path.join(data.annotations, f"{prefix}{validation_name}.csv")
  os.rename(data.csv_files["validate"], validation)
  header = _csv_rows(data.csv_files["train"])[0].keys()
  assert ("is_cc" in header) == is_cc
  _check_kinetics(kinetics.read(data.annotations, data.root), data, data.csv_files["train"],
                  _csv_rows(validation))


def test_kinetics_single_csv_routes_rows_by_split_column(tmp_path):
  data = published.write_kinetics(str(tmp_path), single_csv=True)
  rows = _csv_rows(data.annotations)
  train_csv = os.path.join(tmp_path, "train_only.csv")
  with open(train_csv, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(row for row in rows if row["split"] == "train")
  listing = kinetics.read(data.annotations, data.root)
  _check_kinetics(listing, data, train_csv, [r for r in rows if r["split"] == "val"])
  unlabelled = sum(row["split"] == "test" for row in rows)
  assert unlabelled == len(data.unlabelled_rows) == 2
  assert any(f"{unlabelled} test rows" in note for note in listing.notes)


def test_kinetics_float_seconds_and_commas_in_labels(tmp_path):
  classes = ("riding, or walking with horse", "abseiling", "zumba")
  data = published.write_kinetics(str(tmp_path), classes=classes)
  for name in ("train", "validate"):
    path = data.csv_files[name]
    with open(path) as f:
      text = f.read()
    for row in data.rows["train" if name == "train" else "test"]:
      text = text.replace(f"{row['youtube_id']},{row['time_start']},{row['time_end']},",
                          f"{row['youtube_id']},{row['time_start']}.0,{row['time_end']}.0,")
    with open(path, "w") as f:
      f.write(text)
  assert '"riding, or walking with horse",' in text
  assert "abseiling,-" in text  # Labels without spaces stay unquoted.
  listing = kinetics.read(data.annotations, data.root)
  assert listing.class_names == sorted(classes)
  _check_kinetics(listing, data, data.csv_files["train"],
                  _csv_rows(data.csv_files["validate"]))


def test_kinetics_unknown_validation_label(tmp_path):
  data = published.write_kinetics(str(tmp_path))
  path = data.csv_files["validate"]
  line = _append(path, "zumba,zzzzzzzzzzz,3,13,val,0")
  _one_line_error(ValueError, lambda: kinetics.read(data.annotations, data.root),
                  f"{path}:{line}:", "'zumba'")


@pytest.mark.parametrize("bad_row,words", [
    ("abseiling,abcdefghijk,three,13,train,0", "time_start"),
    ("abseiling,abcdefghijk,13,3,train,0", "time_end"),
    ("abseiling,abcdefghijk,3,13,train", "fields"),
    ("abseiling,,3,13,train,0", "youtube_id")])
def test_kinetics_malformed_row(tmp_path, bad_row, words):
  data = published.write_kinetics(str(tmp_path))
  path = data.csv_files["train"]
  line = _append(path, bad_row)
  _one_line_error(ValueError, lambda: kinetics.read(data.annotations, data.root),
                  f"{path}:{line}:", words)


def test_kinetics_missing_column_and_files(tmp_path):
  data = published.write_kinetics(str(tmp_path))
  path = data.csv_files["validate"]
  with open(path) as f:
    lines = f.read().splitlines()
  with open(path, "w") as f:
    f.write("\n".join([lines[0].replace("youtube_id", "ytid")] + lines[1:]) + "\n")
  _one_line_error(ValueError, lambda: kinetics.read(data.annotations, data.root),
                  f"{path}:1:", "youtube_id")
  os.remove(path)
  _one_line_error(FileNotFoundError, lambda: kinetics.read(data.annotations, data.root),
                  data.annotations, "validat")
  absent = os.path.join(tmp_path, "nothing.csv")
  _one_line_error(FileNotFoundError, lambda: kinetics.read(absent, data.root), absent)
  absent_root = os.path.join(tmp_path, "no_videos")
  _one_line_error(FileNotFoundError, lambda: kinetics.read(data.annotations, absent_root),
                  absent_root)


# Something-Something v2.


def _check_ssv2(listing, data, labels_dir, video_dir):
  with open(os.path.join(labels_dir, os.path.basename(data.json_files["labels"]))) as f:
    indices = {name: int(index) for name, index in json.load(f).items()}
  class_names = sorted(indices, key=indices.get)
  assert listing.class_names == class_names == data.class_names
  for split, name in (("train", "train"), ("test", "validation")):
    with open(data.json_files[name]) as f:
      entries = json.load(f)
    missing = set(data.missing[split])
    expected = [e for e in entries if e["id"] not in missing]
    examples = listing.splits[split]
    assert len(examples) == len(entries) - len(data.missing[split])
    assert [e.name for e in examples] == [e["id"] for e in expected]
    for example, entry in zip(examples, expected):
      bare = entry["template"].replace("[something]", "something")
      assert "[" not in bare
      assert example.label_text == bare
      assert example.label == indices[bare]
      assert example.path == os.path.join(video_dir, entry["id"] + ".webm")
      assert example.start_s is None and example.end_s is None
    assert listing.missing[split] == [os.path.join(video_dir, i + ".webm")
                                      for i in data.missing[split]]


def test_ssv2_splits_labels_and_missing(ssv2_data):
  listing = ssv2.read(ssv2_data.annotations, ssv2_data.root)
  _check_ssv2(listing, ssv2_data, ssv2_data.annotations, ssv2_data.root)
  assert sum(map(len, ssv2_data.missing.values())) == 1
  assert any("test.json" in note and "2 test videos" in note for note in listing.notes)
  converted = {e.name for split in listing.splits.values() for e in split}
  assert not converted & set(ssv2_data.test_ids)


def test_ssv2_prefixed_names_archive_folder_and_index_order(tmp_path):
  data = published.write_ssv2(str(tmp_path), prefixed=True)
  assert os.path.basename(data.json_files["labels"]) == "something-something-v2-labels.json"
  # Key order in the file does not matter, only the indices.
  with open(data.json_files["labels"]) as f:
    labels = json.load(f)
  with open(data.json_files["labels"], "w") as f:
    json.dump(dict(reversed(list(labels.items()))), f)
  nested = os.path.join(data.root, ssv2.ARCHIVE_DIR)
  os.makedirs(nested)
  for name in os.listdir(data.root):
    if name.endswith(".webm"):
      os.rename(os.path.join(data.root, name), os.path.join(nested, name))
  listing = ssv2.read(data.json_files["train"], data.root)
  _check_ssv2(listing, data, data.annotations, nested)


def test_ssv2_unknown_template(tmp_path):
  data = published.write_ssv2(str(tmp_path))
  path = data.json_files["validation"]
  with open(path) as f:
    entries = json.load(f)
  entries[1]["template"] = "Juggling [something]"
  with open(path, "w") as f:
    json.dump(entries, f)
  _one_line_error(ValueError, lambda: ssv2.read(data.annotations, data.root),
                  path, entries[1]["id"], "Juggling [something]")


def test_ssv2_label_indices_with_a_gap(tmp_path):
  data = published.write_ssv2(str(tmp_path))
  path = data.json_files["labels"]
  with open(path) as f:
    labels = json.load(f)
  labels[next(iter(labels))] = str(len(labels))
  with open(path, "w") as f:
    json.dump(labels, f)
  _one_line_error(ValueError, lambda: ssv2.read(data.annotations, data.root), path,
                  "without gaps")


def test_ssv2_malformed_entry_and_missing_files(tmp_path):
  data = published.write_ssv2(str(tmp_path))
  path = data.json_files["train"]
  with open(path) as f:
    entries = json.load(f)
  with open(path, "w") as f:
    json.dump(entries + [{"label": "no id"}], f)
  _one_line_error(ValueError, lambda: ssv2.read(data.annotations, data.root), path,
                  f"entry {len(entries)}")
  with open(path, "w") as f:
    f.write(json.dumps(entries)[:-5])
  _one_line_error(ValueError, lambda: ssv2.read(data.annotations, data.root), path,
                  "JSON")
  os.remove(path)
  _one_line_error(FileNotFoundError, lambda: ssv2.read(data.annotations, data.root),
                  os.path.join(data.annotations, "train"))
  absent = os.path.join(tmp_path, "no_labels")
  _one_line_error(FileNotFoundError, lambda: ssv2.read(absent, data.root), absent)


# EPIC-KITCHENS-100.


def _seconds(timestamp):
  hours, minutes, seconds = timestamp.split(":")
  return 3600 * int(hours) + 60 * int(minutes) + float(seconds)


def _check_ek100(listing, data, verbs, nouns, video_paths=None):
  video_paths = video_paths or data.videos
  assert listing.label_sets == {"verb": verbs, "noun": nouns}
  assert len(listing.class_names) == len(verbs) * len(nouns)
  for split, name in (("train", "train"), ("test", "validation")):
    rows = _csv_rows(data.csv_files[name])
    expected = [row for row in rows if row["video_id"] not in data.missing_videos]
    examples = listing.splits[split]
    assert len(examples) == len(rows) - len(listing.missing[split])
    assert len(listing.missing[split]) == len(data.missing[split])
    assert [e.name for e in examples] == [row["narration_id"] for row in expected]
    for example, row in zip(examples, expected):
      verb, noun = int(row["verb_class"]), int(row["noun_class"])
      assert example.label == verb * len(nouns) + noun
      assert example.label_text == f"{verbs[verb]} {nouns[noun]}"
      assert listing.class_names[example.label] == example.label_text
      assert example.label_sets == (("verb", verb, verbs[verb]), ("noun", noun, nouns[noun]))
      assert example.start_s == pytest.approx(_seconds(row["start_timestamp"]))
      assert example.end_s == pytest.approx(_seconds(row["stop_timestamp"]))
      assert example.path == video_paths[row["video_id"]]


def test_ek100_splits_labels_and_segments(ek100_data):
  data = ek100_data
  listing = ek100.read(data.annotations, data.root)
  verbs = [row["key"] for row in _csv_rows(data.csv_files["verb_classes"])]
  nouns = [row["key"] for row in _csv_rows(data.csv_files["noun_classes"])]
  assert (verbs, nouns) == (data.verbs, data.nouns)
  _check_ek100(listing, data, verbs, nouns)
  # Quoted list columns were written as the published files have them.
  with open(data.csv_files["train"]) as f:
    assert "\"['courgette', 'pan']\",\"[2, 4]\"" in f.read()
  assert any("EPIC_100_test_timestamps.csv" in note for note in listing.notes)
  flat = [p for p in data.videos.values() if os.path.dirname(p) == data.root]
  assert flat and len(flat) < len(data.videos)


def test_ek100_missing_video_is_listed_once_per_segment(ek100_data):
  data = ek100_data
  listing = ek100.read(data.annotations, data.root)
  (video_id, participant), = data.missing_videos.items()
  expected = os.path.join(data.root, participant, "videos", video_id + ".MP4")
  assert listing.missing["train"] == [expected] * len(data.missing["train"])
  assert len(data.missing["train"]) == 2
  assert listing.missing["test"] == []


def test_ek100_without_class_files(tmp_path):
  data = published.write_ek100(str(tmp_path), class_files=False, test_file=False)
  rows = (_csv_rows(data.csv_files["train"]) + _csv_rows(data.csv_files["validation"]))
  num_verbs = max(int(row["verb_class"]) for row in rows) + 1
  num_nouns = max(int(row["noun_class"]) for row in rows) + 1
  assert (num_verbs, num_nouns) != (len(data.verbs), len(data.nouns))
  listing = ek100.read(data.annotations, data.root)
  _check_ek100(listing, data, [f"verb_{i}" for i in range(num_verbs)],
               [f"noun_{i}" for i in range(num_nouns)])
  assert listing.notes == []


def test_ek100_uid_column_and_lower_case_extension(tmp_path):
  data = published.write_ek100(str(tmp_path))
  for name in ("train", "validation"):
    path = data.csv_files[name]
    with open(path) as f:
      lines = f.read().splitlines()
    with open(path, "w") as f:
      f.write("\n".join(["uid," + lines[0]]
                        + [f"{n},{line}" for n, line in enumerate(lines[1:])]) + "\n")
  videos = dict(data.videos)
  video_id = next(iter(videos))
  videos[video_id] = videos[video_id][:-len(".MP4")] + ".mp4"
  os.rename(data.videos[video_id], videos[video_id])
  listing = ek100.read(data.csv_files["train"], data.root)
  _check_ek100(listing, data, data.verbs, data.nouns, videos)


def test_ek100_malformed_timestamp(tmp_path):
  data = published.write_ek100(str(tmp_path))
  path = data.csv_files["validation"]
  line = _append(path, "P01_11_9,P01,P01_11,00:00:01.0,00:00:1.5,00:00:02.00,1,2,"
                       "take tap,take,0,tap,0,['tap'],[0]")
  _one_line_error(ValueError, lambda: ek100.read(data.annotations, data.root),
                  f"{path}:{line}:", "start_timestamp", "00:00:1.5")


def test_ek100_class_beyond_class_file_and_missing_column(tmp_path):
  data = published.write_ek100(str(tmp_path))
  path = data.csv_files["train"]
  line = _append(path, "P01_01_9,P01,P01_01,00:00:01.00,00:00:01.50,00:00:02.00,1,2,"
                       f"take tap,take,0,tap,{len(data.nouns)},['tap'],[0]")
  _one_line_error(ValueError, lambda: ek100.read(data.annotations, data.root),
                  f"{path}:{line}:", "noun_class")
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:
    f.write(text.replace("stop_timestamp", "end_timestamp", 1))
  _one_line_error(ValueError, lambda: ek100.read(data.annotations, data.root),
                  f"{path}:1:", "stop_timestamp")


def test_ek100_missing_annotation_file(tmp_path):
  data = published.write_ek100(str(tmp_path))
  os.remove(data.csv_files["validation"])
  _one_line_error(FileNotFoundError, lambda: ek100.read(data.annotations, data.root),
                  data.csv_files["validation"])


# The frame marks later tests rely on.


def _jpeg_round_trip(frame, short_side):
  image = Image.fromarray(frame)
  if short_side:
    height, width = frame.shape[:2]
    scale = short_side / min(height, width)
    image = image.resize((round(width * scale), round(height * scale)), Image.BILINEAR)
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=75)
  return np.asarray(Image.open(buffer))


def test_frame_number_survives_the_codecs(kinetics_data, ssv2_data, ek100_data):
  long_video = next(iter(kinetics_data.untrimmed.values()))
  ek_video = next(iter(ek100_data.videos.values()))
  webm = next(iter(ssv2_data.videos.values()))
  for path, frames in ((long_video, published.KINETICS_LONG_FRAMES),
                       (ek_video, published.EK100_LONG_FRAMES), (webm, None)):
    decoded = video_io.read_video(path)
    if frames:
      assert len(decoded) == frames
    for index, frame in enumerate(decoded):
      for short_side in (0, 16):
        assert published.frame_number(_jpeg_round_trip(frame, short_side)) == index
  # Class colours come back too (Kinetics: sorted class index).
  listing = kinetics.read(kinetics_data.annotations, kinetics_data.root)
  for example in listing.splits["train"]:
    first = video_io.read_video(example.path, lambda n: np.array([0]))[0]
    assert published.colour_index(first) == example.label


def test_frame_number_rejects_unmarked_frames():
  grey = np.full(published.SIZE + (3,), 128, np.uint8)
  with pytest.raises(ValueError, match="between"):
    published.frame_number(grey)
  frames = published.marked_frames(published.MAX_FRAMES)
  assert [published.frame_number(f) for f in frames] == list(range(published.MAX_FRAMES))
  with pytest.raises(ValueError):
    published.marked_frames(published.MAX_FRAMES + 1)


def test_fixture_videos_are_h264_and_vp9(kinetics_data, ssv2_data, ek100_data):
  for path, codec in ((next(iter(kinetics_data.trimmed.values())), "h264"),
                      (next(iter(ek100_data.videos.values())), "h264"),
                      (next(iter(ssv2_data.videos.values())), "vp9")):
    with av.open(path) as container:
      stream = container.streams.video[0]
      assert stream.codec_context.name == codec
      assert (stream.height, stream.width) == published.SIZE
      assert stream.average_rate == published.FPS
