"""The pure-torch network of stage 1: encoder taps, Hopfield memories, losses, views, pseudo-anomalies."""
