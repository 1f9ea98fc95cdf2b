"""Flax model definitions that share one attention/encoder core."""
