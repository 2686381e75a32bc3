"""Export a fitted detector to TorchScript or ONNX by tracing its inference module.

The exported graph is :class:`anomem.inference.AnoMemModel` itself — the module
:meth:`AnoMem.anomaly_score` and :meth:`AnoMem.anomaly_maps` run — copied and frozen as
it is at export time (:func:`exportable_model`):

* the Hopfield retrieval runs exactly ``memory.max_steps`` updates (Eq. 1). The Python
  model does the same unless ``memory.tol`` > 0, in which case it may stop earlier and
  the exported model's scores differ slightly;
* stage 2 is fixed to what scores at export time: supervised heads (Eq. 10) when they
  are in use, else the one-class norm (Eq. 9); standardisation, the normal bank and the
  λ-weighted merge (Eq. 13) follow;
* φ's pooling is already a constant matrix (:func:`anomem.stage2.heads.adaptive_pool_matrix`),
  and the heat-map smoothing is kornia's Gaussian with reflect padding, both traceable.

Inputs must be float images in [0, 1] of exactly the detector's (C, H, W); the batch
size is free. ``onnx`` and ``onnxruntime`` (the ``export`` extra) are imported only here.

Outputs, by name in the ONNX graph: ``score`` (B,), higher = more anomalous, equal to
``AnoMem.anomaly_score``; ``fused_map`` (B, H, W), equal to ``AnoMem.anomaly_maps(...).fused``.

**Metadata.** Every exported file says how to feed it and how to decide
(:func:`export_metadata`, string keys and string values): the input's channels, height,
width, dtype, range and layout, the per-channel pixel mean / std the graph standardises
with (inside: feed float pixels in [0, 1], do not normalise), the score direction, the
scorer mode, the threshold (value, and its provenance as JSON) when one is set, and the
library version. ONNX keeps them in ``metadata_props``; TorchScript in the extra file
``anomem.json`` (``torch.jit.load(path, _extra_files={"anomem.json": ""})``).
:func:`read_metadata` reads either back without loading the model.
"""

from __future__ import annotations

import copy
import io
import json
import math
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from anomem._version import __version__
from anomem.errors import ConfigError, DataError
from anomem.inference import AnoMemModel
from anomem.io.checkpoint import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from anomem.detector import AnoMem

__all__ = ["FORMATS", "METADATA_FILE", "export_metadata", "export_scorer", "exportable_model", "read_metadata"]

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17
#: The TorchScript extra file holding :func:`export_metadata` as a JSON object.
METADATA_FILE = "anomem.json"


def exportable_model(det: AnoMem, sigma: float | None = None) -> AnoMemModel:
    """A frozen CPU float32 copy of ``det``'s inference module, ready to trace.

    Args:
        det: a fitted detector (not changed).
        sigma: heat-map smoothing σ in pixels; None = the detector's default.
    """
    model = copy.deepcopy(det.inference_model).cpu().float().eval()
    model.mode = "supervised" if det.is_supervised else "one-class"
    if sigma is not None:
        sigma = float(sigma)
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ConfigError(f"sigma must be a finite number >= 0 (pixels), got {sigma!r}")
        model.map_sigma = sigma
    for mem in model.net.memories:
        mem.tol = 0.0  # a fixed number of retrieval steps: no data-dependent loop exit
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def export_metadata(det: AnoMem, module: AnoMemModel | None = None) -> dict[str, str]:
    """What a deployment needs beside the graph, as string keys and values (ONNX's
    ``metadata_props`` hold only strings; lists and objects are JSON).

    Args:
        det: the fitted detector.
        module: the exported module (:func:`exportable_model`); default: a fresh one.
    """
    module = exportable_model(det) if module is None else module
    c, (h, w) = det.in_channels_, module.image_size
    t = det.threshold_
    as_list = lambda v: json.dumps([round(float(x), 8) for x in v.flatten()])  # noqa: E731
    return {
        "anomem_version": __version__,
        "input_name": "image",
        "input_shape": json.dumps(["batch", c, h, w]),
        "input_channels": str(c),
        "input_height": str(h),
        "input_width": str(w),
        "input_dtype": "float32",
        "input_range": "[0, 1]",
        "input_layout": "NCHW",
        "pixel_normalization": "inside the graph: (x - pixel_mean) / pixel_std per channel; feed float pixels in "
                               "[0, 1] (uint8 / 255), not standardised ones",
        "pixel_mean": as_list(module.net.pixel_mean),
        "pixel_std": as_list(module.net.pixel_std),
        "outputs": json.dumps(["score", "fused_map"]),
        "score": "higher = more anomalous; anomaly iff score > threshold",
        "score_mode": module.mode,
        "map_sigma_pixels": repr(float(module.map_sigma)),
        "threshold": "" if t is None else repr(t.value),
        "threshold_provenance": "" if t is None else t.to_json(),
        "threshold_description": "" if t is None else t.describe(),
    }


def read_metadata(path: str | Path) -> dict[str, str]:
    """The :func:`export_metadata` of an exported file (ONNX or TorchScript), read
    without building the model. Raises DataError for a file without it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"exported model {str(path)!r} does not exist")
    if zipfile.is_zipfile(path):  # TorchScript: a zip archive with extra/<name>
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith("/extra/" + METADATA_FILE)]
            if not names:
                raise DataError(f"{str(path)!r} holds no {METADATA_FILE} (exported by an older anomem, or not by anomem)")
            return json.loads(z.read(names[0]).decode("utf-8"))
    try:
        import onnx
    except ImportError:
        raise ConfigError("reading ONNX metadata needs the 'onnx' package: pip install 'anomem[export]'") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several kinds
        raise DataError(f"{str(path)!r} is neither a TorchScript archive nor an ONNX model: {e}") from None
    return {p.key: p.value for p in model.metadata_props}


def export_scorer(det: AnoMem, path: str | Path, format: str = "onnx", sigma: float | None = None) -> Path:
    """Write the detector's scorer to ``path`` as TorchScript or ONNX.

    Args:
        det: a fitted detector.
        path: output file (its directory must exist).
        format: ``"onnx"`` (opset 17, dynamic batch, needs the ``onnx`` package) or
            ``"torchscript"`` (``torch.jit.load``-able).
        sigma: heat-map smoothing σ in pixels; None = the detector's default.

    Returns:
        the path written.
    """
    if format not in FORMATS:
        raise ConfigError(f"export format must be one of {FORMATS}, got {format!r}")
    path = Path(path)
    if not path.parent.is_dir():
        raise DataError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist")
    module = exportable_model(det, sigma)
    meta = export_metadata(det, module)
    example = torch.rand(2, det.in_channels_, *module.image_size)
    if format == "torchscript":
        extra = {METADATA_FILE: json.dumps(meta, indent=1)}
        with torch.no_grad(), _quiet_tracing():
            traced = torch.jit.trace(module, example, check_trace=False)
            atomic_write_bytes(path, lambda f: torch.jit.save(traced, f, _extra_files=extra))
        return path
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs the 'onnx' package: pip install 'anomem[export]'") from None
    buf = io.BytesIO()  # exported and checked in memory, then written atomically
    with torch.no_grad(), _quiet_tracing():
        torch.onnx.export(
            module,
            (example,),
            buf,
            input_names=["image"],
            output_names=["score", "fused_map"],
            dynamic_axes={"image": {0: "batch"}, "score": {0: "batch"}, "fused_map": {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,  # the TorchScript-based exporter: no onnxscript dependency
        )
    model = onnx.load_from_string(buf.getvalue())
    onnx.helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    atomic_write_bytes(path, lambda f: f.write(data))
    return path


class _quiet_tracing(warnings.catch_warnings):
    """Silence what tracing says about this module that does not apply to it: shape
    checks and the scorer's fitted flags become constants (they are fixed once
    exported); and torch's notices that ``torch.jit`` and the TorchScript-based
    ONNX exporter are deprecated (the torch.export-based one needs ``onnxscript``)."""

    def __enter__(self):  # type: ignore[override]
        out = super().__enter__()
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX", category=DeprecationWarning)
        return out
