"""Lingshu-Cell: a generative world model of single cells.

Masked discrete diffusion over quantised raw UMI counts of the whole transcriptome.
"""

__version__ = "0.1.0"
