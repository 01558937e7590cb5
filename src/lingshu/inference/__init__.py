"""Inference layer: turn a checkpoint into AnnData of generated cells."""
