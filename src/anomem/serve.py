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
the same scores. Bad input is a 4xx ``{"error": "..."}`` naming the problem; sizes and
pixel counts are checked before anything is decoded, and each request reserves the memory
its decode will take (estimated from the image headers, :func:`decode_estimate`) from one
budget shared by all requests (:class:`DecodeBudget`), which bounds the memory of
concurrent uploads (:class:`ServeLimits`).
Slow clients, descriptor exhaustion and shutdown are handled in :mod:`anomem.serve_net`.

One thread owns the detector (:class:`MicroBatcher`): requests queue their images, and
whatever waits while the model is busy is scored as one batch. Requests never share
tensors, and each gets its own rows back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import os
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
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from anomem import __version__
from anomem.errors import DataError
from anomem.inputs import check_int_range
from anomem.io.records import score_records
from anomem.serve_decode import (
    MIB,
    BadRequest,
    DecodeBudget,
    Estimate,
    decode_all,
    decode_estimate,
    estimate_all,
)
from anomem.serve_net import (
    ACCEPT_BATCH,
    LISTEN_BACKLOG,
    ThrottledErrors,
    default_max_connections,
    guarded_protocol,
    listen_socket,
)

log = logging.getLogger("anomem.serve")


@dataclass(frozen=True)
class ServeLimits:
    """What one ``POST /score`` may send; validated on construction (DataError).

    Attributes:
        max_files: images per request.
        max_file_bytes: bytes per image file (checked before it is decoded).
        max_request_bytes: bytes per request body (checked from Content-Length before
            it is read, and again while it streams).
        max_batch: images scored together at most (the micro-batch).
        max_pixels: pixels per image (width x height, from the header, before decoding).
        decode_budget: bytes that the decodes of concurrent requests may hold together
            (their estimates, :func:`decode_estimate`); a request waits until its estimate
            fits, and one whose estimate alone is larger is refused (413).
        request_timeout: seconds for a request to arrive whole (408 after).
        shutdown_timeout: seconds a request still arriving gets after SIGTERM (503 after).
        max_connections: connections held at once (None: the descriptor limit less 64).
    """

    max_files: int = 64
    max_file_bytes: int = 10 * MIB
    max_request_bytes: int = 64 * MIB
    max_batch: int = 64
    max_pixels: int = 25_000_000
    decode_budget: int = 512 * MIB
    request_timeout: float = 30.0
    shutdown_timeout: float = 10.0
    max_connections: int | None = None

    def __post_init__(self) -> None:
        check_int_range("max_files", self.max_files, 1, 100_000)
        check_int_range("max_file_bytes", self.max_file_bytes, 1, 2**40)
        check_int_range("max_request_bytes", self.max_request_bytes, 1, 2**40)
        check_int_range("max_batch", self.max_batch, 1, 65536)
        check_int_range("max_pixels", self.max_pixels, 1, 2**40)
        check_int_range("decode_budget", self.decode_budget, 1, 2**50)
        for name in ("request_timeout", "shutdown_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86400:
                raise DataError(f"{name} must be a number of seconds in (0, 86400], got {value!r}")
        if self.max_connections is not None:
            check_int_range("max_connections", self.max_connections, 1, 1 << 20)


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
    what the detector was trained on (as far as the checkpoint records it). The checkpoint
    is named by its file name only: where it lies on the server is not the client's business."""
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
    return {"anomem_version": __version__, "checkpoint": os.path.basename(checkpoint), "preset": det.config_.preset,
            "input": {"channels": det.in_channels_, "height": h, "width": w,
                      "colour": "grey" if det.in_channels_ == 1 else "RGB"},
            "scorer": "supervised heads (Eq. 10)" if det.is_supervised else "one-class (Eq. 9)",
            "threshold": threshold, "training": training}


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
    state: dict[str, Any] = {}

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
            need = await run_in_threadpool(estimate_all, files, det, limits)
            async with state["decodes"].reserve(need):  # bounds the memory of concurrent decodes
                uploads = await run_in_threadpool(decode_all, files, det, limits.max_pixels)
        except BadRequest as e:
            return _error(e.status, str(e))
        except ClientDisconnect:  # the client went, or was cut off (timeout, shutdown): no one to answer
            return _error(499, "client disconnected")
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
        state["decodes"] = DecodeBudget(limits.decode_budget)
        try:
            yield
        finally:
            state.pop("batcher").close()

    app = Starlette(routes=[Route("/health", health), Route("/model", model), Route("/score", score, methods=["POST"])],
                    exception_handlers={HTTPException: http_error, Exception: server_error}, lifespan=lifespan)
    guarded = _BodyLimit(app, limits.max_request_bytes)
    guarded.limits = limits  # run_server reads the timeouts and the connection cap from here
    return guarded


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
            asyncio.get_running_loop().set_exception_handler(ThrottledErrors())  # EMFILE: one line per 10 s
            await super().startup(sockets=sockets)  # listens with the accept batch as its backlog
            sock.listen(LISTEN_BACKLOG)  # the kernel's queue stays long; asyncio still accepts ACCEPT_BATCH a turn
            if self.started:
                announce(url)

    lim: ServeLimits = getattr(app, "limits", None) or ServeLimits()
    protocol = guarded_protocol(lim.request_timeout, lim.shutdown_timeout,
                                lim.max_connections or default_max_connections())
    # uvicorn's own deadline is a backstop: the protocol ends every unfinished request by shutdown_timeout
    server = Server(uvicorn.Config(app, log_level="warning", lifespan="on", http=protocol, backlog=ACCEPT_BATCH,
                                   timeout_graceful_shutdown=math.ceil(lim.shutdown_timeout) + 30))
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # the re-raised SIGTERM: a clean exit
    try:
        server.run(sockets=[sock])
        if signal.SIGINT in getattr(server, "_captured_signals", ()):  # Ctrl-C that uvicorn did not raise again
            raise KeyboardInterrupt
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()


__all__ = ["BadRequest", "DecodeBudget", "Estimate", "MicroBatcher", "ServeLimits", "create_app", "decode_estimate", "listen_socket",
           "model_info", "run_server"]
