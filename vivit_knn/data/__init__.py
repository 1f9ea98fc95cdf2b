"""Input pipelines: synthetic and real video datasets behind one interface.

:mod:`.registry` builds the dataset ``config.dataset`` names (the sources:
:mod:`.synthetic`, :mod:`.named`, :mod:`.tfrecord`, :mod:`.tfds_source`) on the
interface of :mod:`.base`; :mod:`.convert` turns video folders into DMVR shards.
"""
