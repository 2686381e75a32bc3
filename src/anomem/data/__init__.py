"""Dataset readers. :class:`ImageSet` (what every reader returns) lives in
:mod:`anomem.imageset`, below both this package and :mod:`anomem.inputs`."""

from anomem.imageset import ImageSet

__all__ = ["ImageSet"]
