"""vivit_knn: video transformers (ViViT, k-NN attention, TimeSformer, X-ViT, CAST) in JAX/Flax."""

__version__ = "0.1.0"
