"""Pretrained weights: converters from public checkpoint formats and video initialisation."""
