"""Training: model families, the per-worker train loop, and the model directory format."""
