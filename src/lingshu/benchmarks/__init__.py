"""Benchmarks: speed and memory of training and sampling, and end-to-end quality comparisons."""
