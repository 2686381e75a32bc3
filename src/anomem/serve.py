"""``anomem serve``: a fitted detector behind HTTP (Starlette on uvicorn), loaded once.

Routes (docs/cli.md, "Serving"):

* ``GET /health`` -> ``{"status": "ok", "images_scored": n, "batches": m}``;
* ``GET /model`` -> what the detector is (:func:`model_info`);
* ``POST /score`` with one or more multipart fields named ``file`` ->
  ``{"results": [{"name", "score", "score_normalized", "is_anomaly", "threshold"}, ...],
  "conversions": ...}`` in the order sent; ``?maps=png`` adds each fused heat-map as a
  base64 PNG (``heatmap_png``), coloured over the request's images as ``anomem score
  --maps`` colours a set.

Uploads are decoded exactly as ``anomem score`` reads files
(:func:`anomem.data.image_io.decode_image`, resized and converted grey/colour to fit), and
the records are the score files' (:func:`anomem.io.records.score_records`), so the two give
the same scores. Bad input is a 4xx ``{"error": "..."}`` naming the problem; sizes are
checked before anything is decoded (:class:`ServeLimits`).

One thread owns the detector (:class:`MicroBatcher`): requests queue their images, and
whatever waits while the model is busy is scored as one batch. Requests never share
tensors, and each gets its own rows back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import queue
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import python_multipart  # noqa: F401 - Starlette parses uploads with it: missing, fail at start, not per request
import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from anomem import __version__
from anomem.data.image_io import count_conversions, decode_image, describe_conversions
from anomem.errors import DataError
from anomem.inputs import check_int_range
from anomem.io.records import score_records

log = logging.getLogger("anomem.serve")
MIB = 2**20


@dataclass(frozen=True)
class ServeLimits:
    """What one ``POST /score`` may send; validated on construction (DataError).

    Attributes:
        max_files: images per request.
        max_file_bytes: bytes per image file (checked before it is decoded).
        max_request_bytes: bytes per request body (checked from Content-Length before
            it is read, and again while it streams).
        max_batch: images scored together at most (the micro-batch).
    """

    max_files: int = 64
    max_file_bytes: int = 10 * MIB
    max_request_bytes: int = 64 * MIB
    max_batch: int = 64

    def __post_init__(self) -> None:
        check_int_range("max_files", self.max_files, 1, 100_000)
        check_int_range("max_file_bytes", self.max_file_bytes, 1, 2**40)
        check_int_range("max_request_bytes", self.max_request_bytes, 1, 2**40)
        check_int_range("max_batch", self.max_batch, 1, 65536)


class Scored(NamedTuple):
    """One request's share of a micro-batch: ``scores`` (n,) and, with maps, ``fused`` (n, H, W)."""

    scores: np.ndarray
    fused: np.ndarray | None


class _Job(NamedTuple):
    images: torch.Tensor  # (n, C, H, W) uint8 at the detector's input
    maps: bool
    future: Future


class MicroBatcher:
    """The one thread that scores: jobs queue up, and all that wait (up to ``max_batch``
    images) are scored in one call of the detector, then split back in order."""

    def __init__(self, det: Any, max_batch: int) -> None:
        self.det, self.max_batch = det, max_batch
        self.images, self.batches = 0, 0  # scored so far (GET /health shows them)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="anomem-scorer", daemon=True)
        self._thread.start()

    def submit(self, images: torch.Tensor, maps: bool) -> Future:
        future: Future = Future()
        self._jobs.put(_Job(images, maps, future))
        return future

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        stop = False
        while not stop:
            job = self._jobs.get()
            if job is None:
                return
            batch, n = [job], job.images.shape[0]
            while n < self.max_batch:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
                n += more.images.shape[0]
            # a request whose client went away was cancelled: skip it (from here on no job can be)
            batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
            for group in ([j for j in batch if not j.maps], [j for j in batch if j.maps]):
                if group:
                    self._score(group)

    def _score(self, jobs: list[_Job]) -> None:
        try:
            images = torch.cat([j.images for j in jobs])  # (sum n, C, H, W)
            if jobs[0].maps:
                maps = self.det.anomaly_maps(images, batch_size=self.max_batch)
                scores, fused = maps.scores, maps.fused
            else:
                scores, fused = self.det.anomaly_score(images, batch_size=self.max_batch), None
        except Exception as e:  # noqa: BLE001 - handed to the requests, which answer 500 and go on
            for j in jobs:
                j.future.set_exception(e)
            return
        self.images, self.batches = self.images + images.shape[0], self.batches + 1
        start = 0
        for j in jobs:
            end = start + j.images.shape[0]
            j.future.set_result(Scored(scores[start:end], None if fused is None else fused[start:end]))
            start = end


def model_info(det: Any, checkpoint: str) -> dict[str, Any]:
    """``GET /model``: version, preset, input, scorer, the threshold and how it was set, and
    what the detector was trained on (as far as the checkpoint records it)."""
    th = det.threshold_
    meta = det.meta_ if isinstance(getattr(det, "meta_", None), dict) else {}
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    h, w = det.image_size_
    threshold = None
    if th is not None:
        threshold = {"value": th.value, "method": th.method, "target": th.target, "source": th.source,
                     "n_normal": th.n_normal, "n_anomaly": th.n_anomaly, "fpr": th.fpr, "recall": th.recall,
                     "target_reason": th.target_reason, "note": th.note, "description": th.describe()}
    training = {
        "data": metrics.get("data"),
        "normals_in_bank": int(det.banks_.normal_scores.shape[0]),
        "held_out_normals": None if det.calibration_bank_ is None else int(det.calibration_bank_.raw.shape[0]),
        "labelled_anomalies": int(det.anomaly_bank_[0].shape[0]) if det.anomaly_bank_ else 0,
        "epochs": len(det.history_),
        "seed": det.config_.train.seed,
        "test_auroc": metrics.get("test_auroc"),
    }
    return {"anomem_version": __version__, "checkpoint": checkpoint, "preset": det.config_.preset,
            "input": {"channels": det.in_channels_, "height": h, "width": w,
                      "colour": "grey" if det.in_channels_ == 1 else "RGB"},
            "scorer": "supervised heads (Eq. 10)" if det.is_supervised else "one-class (Eq. 9)",
            "threshold": threshold, "training": training}


class BadRequest(Exception):
    """A request the server refuses: answered ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes is refused from its Content-Length
    before it is read, and stopped while it streams when no length was sent."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            text = f"request body is {length.decode(errors='replace')} bytes; the limit is {self.limit} bytes (--max-request-mb)"
            return await _error(413 if length.isdigit() else 400, text)(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BadRequest(413, f"request body is over {self.limit} bytes (--max-request-mb)")
            return message

        await self.app(scope, counted, send)


async def _read_uploads(request: Request, limits: ServeLimits) -> list[tuple[str, bytes]]:
    """The ``file`` fields of a multipart body as (name, bytes), every size checked first."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest(415, "send the images as multipart/form-data fields named 'file' (curl -F file=@image.png)")
    try:
        async with request.form(max_files=limits.max_files, max_fields=limits.max_files) as form:
            return await _collect_files(form, limits)
    except HTTPException as e:  # what Starlette's multipart parser refuses
        if "files" in str(e.detail):
            raise BadRequest(413, f"too many files: at most {limits.max_files} per request (--max-files)") from None
        raise BadRequest(400, f"malformed multipart body: {e.detail}") from None


async def _collect_files(form: Any, limits: ServeLimits) -> list[tuple[str, bytes]]:
    """(name, bytes) of each ``file`` field, after every field's kind and size is checked."""
    other = sorted(set(form.keys()) - {"file"})
    if other:
        raise BadRequest(400, f"unexpected form field(s) {', '.join(map(repr, other))}: send images as 'file'")
    uploads = form.getlist("file")
    if not uploads:
        raise BadRequest(400, "no images: send one or more multipart fields named 'file'")
    names = []
    for i, up in enumerate(uploads):
        if not isinstance(up, UploadFile):
            raise BadRequest(400, f"field 'file' #{i + 1} is text, not a file upload (curl -F file=@image.png)")
        names.append(up.filename or f"file{i + 1}")
        if up.size is not None and up.size > limits.max_file_bytes:
            raise BadRequest(413, f"{names[-1]} is {up.size} bytes; the limit is {limits.max_file_bytes} "
                                  "bytes per image (--max-file-mb)")
    return [(name, await up.read()) for name, up in zip(names, uploads)]


class Uploads(NamedTuple):
    """A request's images at the detector's input: ``images`` (n, C, H, W) uint8, and what
    was converted to fit it (``anomem score``'s stderr line), or None."""

    images: torch.Tensor
    conversions: str | None


def _decode_all(files: list[tuple[str, bytes]], det: Any) -> Uploads:
    """The uploads decoded as ``anomem score`` reads files."""
    decoded = []
    for name, data in files:
        try:
            decoded.append(decode_image(data, name, det.image_size_, det.in_channels_))
        except DataError as e:
            raise BadRequest(415, f"not an image: {e}") from None
    counts = count_conversions([d.info for d in decoded], det.image_size_, det.in_channels_)
    return Uploads(torch.stack([d.image for d in decoded]), describe_conversions(counts))


def _with_maps(records: list[dict], fused: np.ndarray) -> list[dict]:
    from anomem.bench.report import heatmap_png, map_range

    vrange = map_range(fused)  # one colour range over the request's images
    for record, fmap in zip(records, fused):
        record["heatmap_png"] = base64.b64encode(heatmap_png(fmap, vrange)).decode("ascii")
    return records


def create_app(det: Any, checkpoint: str, limits: ServeLimits | None = None) -> Any:
    """The ASGI application serving ``det`` (scoring starts and stops with the app's lifespan)."""
    limits = limits or ServeLimits()
    info = model_info(det, checkpoint)
    state: dict[str, MicroBatcher] = {}

    async def health(request: Request) -> JSONResponse:
        batcher = state["batcher"]
        return JSONResponse({"status": "ok", "images_scored": batcher.images, "batches": batcher.batches})

    async def model(request: Request) -> JSONResponse:
        return JSONResponse(info)

    async def score(request: Request) -> JSONResponse:
        maps = request.query_params.get("maps")
        try:
            if maps not in (None, "png"):
                raise BadRequest(400, f"maps must be 'png', got {maps!r}")
            files = await _read_uploads(request, limits)
            uploads = await run_in_threadpool(_decode_all, files, det)
        except BadRequest as e:
            return _error(e.status, str(e))
        try:
            got: Scored = await asyncio.wrap_future(state["batcher"].submit(uploads.images, maps == "png"))
            records = score_records([n for n, _ in files], got.scores, det.threshold_, key="name")
            if got.fused is not None:
                records = await run_in_threadpool(_with_maps, records, got.fused)
        except Exception as e:  # noqa: BLE001 - one line to the client, the traceback to the log
            log.exception("scoring failed")
            return _error(500, f"scoring failed: {type(e).__name__}: {e}")
        return JSONResponse({"results": records, "conversions": uploads.conversions})

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    async def server_error(request: Request, exc: Exception) -> JSONResponse:  # the traceback goes to the log
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["batcher"] = MicroBatcher(det, limits.max_batch)
        try:
            yield
        finally:
            state.pop("batcher").close()

    app = Starlette(routes=[Route("/health", health), Route("/model", model), Route("/score", score, methods=["POST"])],
                    exception_handlers={HTTPException: http_error, Exception: server_error}, lifespan=lifespan)
    return _BodyLimit(app, limits.max_request_bytes)


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` (0: a free port), or a DataError saying why not.

    Made with proto ``IPPROTO_TCP``, as asyncio's own servers are: only then does asyncio
    turn Nagle's algorithm off on each connection; without it a kept-alive client waits for
    its delayed ACK on every answer (docs/performance.md, "Serving").
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except (OSError, OverflowError) as e:
        sock.close()
        raise DataError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
    return sock


def run_server(app: Any, host: str, port: int, announce: Callable[[str], None]) -> None:
    """Serve ``app`` on ``host:port`` (0: a free port) until SIGTERM or Ctrl-C.

    The socket is bound here, so ``announce`` gets the real URL (with the port the system
    chose), once the application has started and the signal handlers are in place. uvicorn
    shuts down gracefully on SIGTERM (requests in flight finish, then the scoring thread
    stops) and raises the signal again once done; the handler installed here takes it, so
    SIGTERM ends the process with exit code 0 (Ctrl-C raises KeyboardInterrupt).

    Raises:
        DataError: the address cannot be bound (in use, not local, no permission).
    """
    import uvicorn

    sock = listen_socket(host, port)
    shown = f"[{host}]" if sock.family == socket.AF_INET6 else host
    url = f"http://{shown}:{sock.getsockname()[1]}"

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                announce(url)

    server = Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=30))
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # the re-raised SIGTERM: a clean exit
    try:
        server.run(sockets=[sock])
        if signal.SIGINT in getattr(server, "_captured_signals", ()):  # Ctrl-C that uvicorn did not raise again
            raise KeyboardInterrupt
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()


__all__ = ["MicroBatcher", "ServeLimits", "create_app", "listen_socket", "model_info", "run_server"]
