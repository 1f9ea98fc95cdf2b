"""Input pipelines: synthetic and real video datasets behind one interface.

Modules, from the interface down to the files:

  registry     ``config.dataset`` -> dataset (and one video file's test views);
               its schemas load without TensorFlow, the sources on first use
  base         the dataset interface and the resumable, host-sliced tf.data
               train / padded eval pipelines every source uses
  synthetic    moving-square clips whose label lies in the frame order
  named        ``ucf101`` / ``hmdb51``: raw folder, TFRecords or TFDS
  tfrecord     DMVR-format TFRecords: record, sidecar files, ``tfrecord``
  tfds_source  ``tfds``: any TFDS video builder
  clips        example tables and the pipeline shared by real sources
  options      the ``config.dataset`` schema of every source; processing checks
  processors   frame sampling, crops and normalisation, test views
  augment      colour jitter and RandAugment for clips
  splits       train/test lists of the raw-folder layouts
  records      random access to TFRecord files by byte offset
  video_io     reading and writing video files with PyAV
  skips        the error and tally for videos that cannot be decoded
  convert      ``python -m vivit_knn.data.convert``: folder -> DMVR shards
"""
