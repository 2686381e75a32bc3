"""Stage 2: the signals that score an image from the frozen stage 1, and their fusion."""
