"""Files in and out: checkpoints, detector persistence and validation, export, staged outputs."""
