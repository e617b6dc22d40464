"""Scoring a model on labelled photos: per-image numbers and summaries (`scores`), the published protocol's inputs
(`paper`), the report's figures (`figures`) and page (`report`). `runs.evaluate` runs the model over the photos
and writes the report."""
