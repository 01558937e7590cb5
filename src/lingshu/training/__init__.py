"""Training layer: optimisation loop, EMA, learning-rate schedule and checkpoints."""
