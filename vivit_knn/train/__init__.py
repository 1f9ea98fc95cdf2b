"""Training: one loop, losses, optimisers, sharding and checkpoints."""
