"""Datasets as in-memory image sets.

Every loader in this package returns an :class:`ImageSet`: a uint8 image tensor plus
per-image labels. Keeping whole datasets as one uint8 tensor lets the training engine
index batches directly (and keep them on the accelerator) with no per-image Python.

Symbols: N images, C channels (1 or 3), H W spatial size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from anomem.errors import DataError

__all__ = ["ImageSet"]


@dataclass(frozen=True)
class ImageSet:
    """A labelled set of images held in memory.

    Attributes:
        images: uint8 tensor, shape (N, C, H, W), C in {1, 3}.
        targets: int64 tensor, shape (N,): the dataset's class index of each image
            (for user folders: 0 = normal, 1 = anomaly).
        class_names: name of each class index, ``len(class_names) > targets.max()``.
        anomaly: optional bool tensor (N,), True where the image is a known anomaly
            (user folders); named datasets leave it ``None`` and protocols derive it
            from ``targets``.
        anomaly_types: optional per-image type name ("" for normals), for the
            cross-type protocol.
        masks: optional uint8 tensor (N, 1, H, W), 255 = anomalous pixel, for
            localisation metrics; all-zero for images without a mask.
        paths: optional source file of each image (folders), for reports.
    """

    images: torch.Tensor
    targets: torch.Tensor
    class_names: tuple[str, ...]
    anomaly: torch.Tensor | None = None
    anomaly_types: tuple[str, ...] | None = None
    masks: torch.Tensor | None = None
    paths: tuple[str, ...] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        imgs, tg = self.images, self.targets
        if not isinstance(imgs, torch.Tensor) or imgs.dtype != torch.uint8 or imgs.ndim != 4:
            raise DataError(
                f"ImageSet.images must be a uint8 tensor (N, C, H, W), got "
                f"{getattr(imgs, 'dtype', type(imgs))} with shape {tuple(getattr(imgs, 'shape', ()))}"
            )
        if imgs.shape[1] not in (1, 3):
            raise DataError(f"ImageSet.images must have 1 or 3 channels, got {imgs.shape[1]}")
        n = imgs.shape[0]
        if tg.shape != (n,):
            raise DataError(f"ImageSet.targets must have shape ({n},), got {tuple(tg.shape)}")
        for name in ("anomaly_types", "paths"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise DataError(f"ImageSet.{name} has {len(v)} entries for {n} images")
        if self.anomaly is not None and self.anomaly.shape != (n,):
            raise DataError(f"ImageSet.anomaly must have shape ({n},)")
        if self.masks is not None and tuple(self.masks.shape) != (n, 1, *imgs.shape[2:]):
            raise DataError(
                f"ImageSet.masks must have shape ({n}, 1, {imgs.shape[2]}, {imgs.shape[3]}), "
                f"got {tuple(self.masks.shape)}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> ImageSet:
        """Rows ``index`` (int64 indices or a bool mask) of every per-image field."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        idx = index.tolist()
        return ImageSet(
            images=self.images[index],
            targets=self.targets[index],
            class_names=self.class_names,
            anomaly=None if self.anomaly is None else self.anomaly[index],
            anomaly_types=None if self.anomaly_types is None else tuple(self.anomaly_types[i] for i in idx),
            masks=None if self.masks is None else self.masks[index],
            paths=None if self.paths is None else tuple(self.paths[i] for i in idx),
            meta=dict(self.meta),
        )
