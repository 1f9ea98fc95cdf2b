"""Input pipelines: synthetic and real video datasets behind one interface."""
