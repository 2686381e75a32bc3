"""The named choices a config may make and the model implements, without torch.

:mod:`anomem.config` checks a config against these before anything is built (reading a
config never imports torch); the modules that implement each choice import the same
tuple, so the two cannot drift apart.
"""

from __future__ import annotations

STEMS = ("small", "imagenet", "imagenet8", "auto")  # anomem.model.backbone
NORMALISATIONS = ("none", "l2", "centered-l2", "layernorm")  # anomem.model.memory
SHIFTS = ("rot90", "rot180", "rot270", "vflip", "hflip", "permute")  # anomem.model.pseudo
DEFECTS = ("cutpaste", "scar", "noise", "smooth", "gain", "graft")  # anomem.model.pseudo
MODES = ("auto", "one-class", "supervised")  # anomem.inference: how the score reads the heads
# anomem.config.resolve_local_recipe; named so because YAML reads "on" and "off" as booleans
LOCAL_RECIPES = ("never", "auto", "always")
# the largest image side the ``auto`` stem treats as small (anomem.model.backbone.resolve_stem);
# the ``auto`` local recipe switches on above it (anomem.config.resolve_local_recipe)
SMALL_SIDE = 64

__all__ = ["DEFECTS", "LOCAL_RECIPES", "MODES", "NORMALISATIONS", "SHIFTS", "SMALL_SIDE", "STEMS"]
