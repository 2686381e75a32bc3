"""Losses of AnoMem, one file each, as plain functions plus thin modules."""

from anomem.model.losses.barlow import BarlowTwins, barlow_twins
from anomem.model.losses.contrasted_memory import (
    ContrastedMemoryLoss,
    LossTerms,
    PairwiseObjective,
    ScalePairs,
    local_hinge,
)
from anomem.model.losses.hinge import double_hinge
from anomem.model.losses.ntxent import NTXent, nt_xent
from anomem.model.losses.variance import variance_loss


def make_objective(name: str, temperature: float = 0.1, barlow_lambda: float = 5e-3) -> PairwiseObjective:
    """The pairwise objective named in the config (``ntxent`` or ``barlow``)."""
    if name == "ntxent":
        return NTXent(temperature)
    if name == "barlow":
        return BarlowTwins(barlow_lambda)
    from anomem.errors import ConfigError

    raise ConfigError(f"unknown objective {name!r}; expected 'ntxent' or 'barlow'")


__all__ = [
    "BarlowTwins",
    "ContrastedMemoryLoss",
    "LossTerms",
    "NTXent",
    "PairwiseObjective",
    "ScalePairs",
    "barlow_twins",
    "double_hinge",
    "local_hinge",
    "make_objective",
    "nt_xent",
    "variance_loss",
]
