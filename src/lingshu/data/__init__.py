"""Data layer: reading and validating counts, gene vocabularies, tokens and mini-batches."""
