"""`crnet serve BUNDLE`: Triton Inference Server (through PyTriton) with cached supports.

Two models, batching off (the contract clients rely on; keep the names):

* ``crnet_support``: ``images`` UINT8 [K,H,W,3], ``masks`` UINT8 [K,H,W] (1 object,
  0 background, 255 ignore) -> ``support_id`` BYTES [1]. Encodes the support set once and
  keeps its features in a bounded LRU store (crnet.serve.support_store).
* ``crnet_segment``: ``support_id`` BYTES [1], ``image`` UINT8 [H,W,3] -> ``mask`` BOOL
  [H,W], ``probability`` FP32 [H,W].

The public ports are crnet's own front ends (crnet.serve.http_front, crnet.serve.grpc_front):
they refuse a request body over the size bound before reading it, the routes that load or
unload models or register shared memory, and connections over a bound, and forward the rest
to tritonserver on internal loopback ports. Every request is then checked against
RequestLimits (crnet.serve.limits: id length, image pixels, K, request size) before any
work. Errors a client caused (bad inputs, unknown ids,
requests over a limit) come back as HTTP 400 / gRPC INVALID_ARGUMENT with the one line
``[crnet:<ErrorClass>] <message>`` (crnet.serve.proxy_model), and are logged with the
support id truncated; the server keeps serving. The public ports open only once both
models are loaded, and a stop ends every child process and removes the shared memory
(crnet.serve.lifecycle).
The support store's sizes and counters are served in Prometheus text format after Triton's
own metrics on ``--metrics-port`` and alone on ``--store-metrics-port`` (PyTriton runs
the models in this process, outside Triton's custom-metrics API).

Needs the ``serve`` extra: ``pip install -e ".[serve]"`` (nvidia-pytriton).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sysconfig
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from crnet.runtime.preprocess import InputError
from crnet.serve.http_front import DEFAULT_MAX_CONNECTIONS, DEFAULT_TIMEOUT_S, FrontEndError
from crnet.serve.limits import (
    HEADER_ALLOWANCE_BYTES,
    DeclaredTensor,
    RequestLimits,
    check_declared,
    check_segment_request,
    check_support_request,
    loggable_id,
    one_line,
)
from crnet.serve.support_store import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ENTRIES,
    DEFAULT_TTL_S,
    SupportStore,
    UnknownSupportError,
    prometheus_text,
    support_id,
)

LOG = logging.getLogger("crnet.serve.server")

SUPPORT_MODEL = "crnet_support"
SEGMENT_MODEL = "crnet_segment"
ERROR_TAG = "[crnet:{kind}] "
DEFAULT_STORE_METRICS_PORT = 8003
DEFAULT_HOST = "127.0.0.1"
"""Where `crnet serve` listens unless told: loopback, as the endpoints have no
authentication; a server for other machines names its address (``--host 0.0.0.0``)."""
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class RequestError(Exception):
    """An error to send back to the client: ``[crnet:<kind>] <message>``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(ERROR_TAG.format(kind=kind) + message)
        self.kind = kind
        self.message = message


class SupportService:
    """The models' logic, free of Triton: register supports, segment against them."""

    def __init__(self, segmenter: Any, store: SupportStore,
                 limits: RequestLimits | None = None) -> None:
        self.segmenter = segmenter
        self.store = store
        self.limits = limits if limits is not None else RequestLimits()
        self._salt = f"{segmenter.spec.name}|{segmenter.backend_name}|{segmenter.precision}"

    def register(self, images: np.ndarray, masks: np.ndarray) -> str:
        """Encode ``images`` [K,H,W,3] and ``masks`` [K,H,W] and store them; their id."""
        images, masks = np.asarray(images), np.asarray(masks)
        if images.ndim != 4 or masks.ndim != 3:
            raise InputError(f"images must be [K,H,W,3] and masks [K,H,W], got shapes "
                             f"{list(images.shape)} and {list(masks.shape)}")
        key = support_id(images, masks, self._salt)
        with contextlib.suppress(UnknownSupportError):
            self.store.get(key)  # held already: marked as used, not encoded twice
            return key
        support = self.segmenter.encode_support(list(images), list(masks))
        self.store.put(key, support, support.feat.nbytes + support.mask.nbytes)
        return key

    def segment(self, key: str, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask [H,W] bool, probability [H,W] float32) of ``image`` against support ``key``."""
        support = self.store.get(key)
        mask, probability = self.segmenter.segment(image, return_prob=True, support=support)
        return mask, probability.astype(np.float32, copy=False)


CLIENT_ERRORS = (InputError,)


def request_error(error: Exception) -> RequestError:
    """The client-facing error for an exception raised while serving a request: its class
    name and its message on one line (crnet.serve.limits.one_line)."""
    if isinstance(error, RequestError):
        return error
    return RequestError(type(error).__name__, one_line(str(error)))


def tensors(request: Any) -> dict[str, Any]:
    """The input tensors of a request: a PyTriton Request's ``data``, or a plain dict."""
    data = getattr(request, "data", request)
    return dict(data) if isinstance(data, dict) else {}


def refused(model: str, error: Exception, request: Any) -> RequestError:
    """``request_error(error)``, logged: a client error as one line with the support id
    truncated, anything else with its traceback."""
    answer = request_error(error)
    raw_id = tensors(request).get("support_id")
    shown = ""
    if raw_id is not None:
        flat = np.asarray(raw_id, dtype=object).reshape(-1)
        shown = f"; support_id {loggable_id(flat[0]) if flat.size else '(none)'}"
    if isinstance(error, CLIENT_ERRORS):
        LOG.warning("%s refused a request: %s%s", model, answer, shown)
    else:
        LOG.error("%s failed a request: %s%s", model, answer, shown, exc_info=error)
    return answer


def support_infer(service: SupportService) -> Callable[[list[Any]], list[dict[str, np.ndarray]]]:
    """The crnet_support inference callable (one response per request, batching off)."""

    def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        responses = []
        for request in requests:
            try:
                images, masks = check_support_request(tensors(request), service.limits)
                key = service.register(images, masks)
            except Exception as error:  # every failure goes back as a clean Triton error
                raise refused(SUPPORT_MODEL, error, request) from None
            responses.append({"support_id": np.array([key.encode()], dtype=np.bytes_)})
        return responses

    return infer


def segment_infer(service: SupportService) -> Callable[[list[Any]], list[dict[str, np.ndarray]]]:
    """The crnet_segment inference callable."""

    def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        responses = []
        for request in requests:
            try:
                key, image = check_segment_request(tensors(request), service.limits)
                mask, probability = service.segment(key, image)
            except Exception as error:
                raise refused(SEGMENT_MODEL, error, request) from None
            responses.append({"mask": mask, "probability": probability})
        return responses

    return infer


def bind_models(triton: Any, service: SupportService, instances: int = 2) -> None:
    """Bind crnet_support and crnet_segment to a pytriton.triton.Triton."""
    from pytriton.model_config import ModelConfig, Tensor

    config = ModelConfig(batching=False)
    triton.bind(
        model_name=SUPPORT_MODEL,
        infer_func=support_infer(service),
        inputs=[Tensor(name="images", dtype=np.uint8, shape=(-1, -1, -1, 3)),
                Tensor(name="masks", dtype=np.uint8, shape=(-1, -1, -1))],
        outputs=[Tensor(name="support_id", dtype=np.bytes_, shape=(1,))],
        config=config, strict=True)
    triton.bind(
        model_name=SEGMENT_MODEL,
        infer_func=[segment_infer(service) for _ in range(max(1, instances))],
        inputs=[Tensor(name="support_id", dtype=np.bytes_, shape=(1,)),
                Tensor(name="image", dtype=np.uint8, shape=(-1, -1, 3))],
        outputs=[Tensor(name="mask", dtype=np.bool_, shape=(-1, -1)),
                 Tensor(name="probability", dtype=np.float32, shape=(-1, -1))],
        config=config, strict=True)


@contextlib.contextmanager
def python_backend_env() -> Iterator[None]:
    """Put this interpreter's libpython first on LD_LIBRARY_PATH while Triton starts.

    PyTriton's Python-backend stub links ``libpython3.X.so``; found elsewhere (a distro's
    older patch release) model loading fails with ``'_thread.RLock' object has no
    attribute '_recursion_count'``. PyTriton copies os.environ into the server's
    environment when it starts it.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    previous = os.environ.get("LD_LIBRARY_PATH")
    if libdir and Path(libdir).is_dir():
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, previous) if p)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = previous


def start_store_metrics(store: SupportStore, host: str, port: int) -> ThreadingHTTPServer:
    """Serve the store's Prometheus metrics at http://host:port/metrics on a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.rstrip("/") not in ("", "/metrics"):
                self.send_error(404, "the support store's metrics are at /metrics")
                return
            body = prometheus_text(store.stats()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            LOG.debug("metrics: " + format, *args)

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as error:
        raise FrontEndError(f"cannot listen on {host}:{port}: {error.strerror or error}; "
                            "choose another port with --store-metrics-port") from None
    threading.Thread(target=server.serve_forever, name="crnet-store-metrics",
                     daemon=True).start()
    return server


TRITON_HOST = "127.0.0.1"
"""Where tritonserver itself listens: loopback only, on free ports; clients reach it through
crnet's bounded front ends (crnet.serve.http_front, crnet.serve.grpc_front) on the public
ports."""


@dataclass(frozen=True)
class InternalPorts:
    """tritonserver's own ports on TRITON_HOST, behind the front ends."""

    http: int
    grpc: int
    metrics: int


def internal_ports() -> InternalPorts:
    """Three distinct free loopback ports for tritonserver."""
    from crnet.serve.http_front import free_loopback_port

    ports: list[int] = []
    while len(ports) < 3:
        port = free_loopback_port()
        if port not in ports:
            ports.append(port)
    return InternalPorts(*ports)


def triton_settings(ports: InternalPorts, log_verbose: int = 0) -> dict[str, Any]:
    """The keyword arguments of pytriton's TritonConfig: every endpoint on loopback."""
    return {"http_address": TRITON_HOST, "http_port": ports.http,
            "grpc_address": TRITON_HOST, "grpc_port": ports.grpc,
            "metrics_address": TRITON_HOST, "metrics_port": ports.metrics,
            "log_verbose": log_verbose, "exit_timeout_secs": 5}


def triton_config(ports: InternalPorts, log_verbose: int = 0) -> Any:
    """A pytriton TritonConfig listening on loopback at ``ports``."""
    from pytriton.triton import TritonConfig

    return TritonConfig(**triton_settings(ports, log_verbose))


def front_ends(args: ServeOptions, ports: InternalPorts, store: SupportStore) -> list[Any]:
    """The public endpoints, not yet started: HTTP and gRPC, each refusing a request over
    the size bound before reading it and one whose declared tensors break a limit before
    reading their data; and Triton's metrics with the support store's appended."""
    from crnet.serve.grpc_front import GrpcFront
    from crnet.serve.http_front import METRICS_ROUTES, FrontSettings, HttpFront

    hint = (f"--max-request-mb {args.limits.max_request_mb:g} plus "
            f"{HEADER_ALLOWANCE_BYTES / 2**20:g} MiB for the header")
    limits = args.limits

    def check(model: str, tensors: Mapping[str, DeclaredTensor]) -> None:
        check_declared(model, tensors, limits)

    inference = FrontSettings(upstream_port=ports.http, max_body_bytes=limits.max_body_bytes,
                              limit_hint=hint, max_connections=args.max_connections,
                              timeout_s=args.client_timeout_s, check=check)
    metrics = FrontSettings(upstream_port=ports.metrics, max_body_bytes=0,
                            routes=METRICS_ROUTES, limit_hint="metrics requests have no body",
                            max_connections=16, timeout_s=args.client_timeout_s,
                            append=lambda: prometheus_text(store.stats()).encode(),
                            port_flag="--metrics-port")
    return [HttpFront(args.host, args.http_port, inference),
            GrpcFront(args.host, args.grpc_port, f"{TRITON_HOST}:{ports.grpc}",
                      limits.max_body_bytes, max_concurrent=args.max_connections,
                      workers=args.max_connections, check=check),
            HttpFront(args.host, args.metrics_port, metrics)]


@contextlib.contextmanager
def running(fronts: list[Any]) -> Iterator[None]:
    """Start every front end (none left running if one cannot listen); stop them on exit."""
    started: list[Any] = []
    try:
        for front in fronts:
            front.start()
            started.append(front)
        yield
    finally:
        for front in reversed(started):
            front.stop()


def listening_line(options: ServeOptions) -> str:
    """Where the server listens, as printed at start: the host and each port; a host other
    than loopback gets a reminder that the endpoints are unauthenticated."""
    store = (f"{options.host}:{options.store_metrics_port}"
             if options.store_metrics_port >= 0 else "off")
    line = (f"crnet serve: listening on {options.host}: http {options.host}:"
            f"{options.http_port}, grpc {options.host}:{options.grpc_port}, metrics "
            f"{options.host}:{options.metrics_port}, store metrics {store}")
    if options.host not in LOOPBACK_HOSTS:
        line += (" (reachable from other machines, without authentication; --host "
                 f"{DEFAULT_HOST} keeps it to this one)")
    return line


def serve_problem() -> str | None:
    """Why `crnet serve` cannot run in this environment, or None when it can."""
    from importlib import metadata

    try:
        requirements = metadata.requires("nvidia-pytriton") or []
        import pytriton  # noqa: F401
    except (ImportError, metadata.PackageNotFoundError):
        return 'needs nvidia-pytriton; install the extra: pip install -e ".[serve]"'
    pins_numpy1 = any(req.replace(" ", "").startswith("numpy") and "<2" in req
                      and "extra" not in req for req in requirements)
    if pins_numpy1 and int(np.__version__.split(".")[0]) >= 2:
        return (f"nvidia-pytriton {metadata.version('nvidia-pytriton')} requires numpy<2 and "
                f"this environment has numpy {np.__version__}: its Python-backend stub then "
                "misreads tensors (inputs arrive zeroed, outputs empty). Install the serve "
                "extra into its own environment, where pip keeps numpy<2: "
                'pip install -e ".[serve]"')
    return None


@dataclass(frozen=True)
class ServeOptions:
    """What `crnet serve` serves, where, and how much it keeps."""

    bundle: Path
    backend: str = "auto"
    precision: str = "fp32"
    threads: int | None = None
    """onnxruntime intra-op threads (None: its own)."""
    host: str = DEFAULT_HOST
    """The address every endpoint listens on (loopback: this machine only)."""
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    """Triton's metrics."""
    store_metrics_port: int = DEFAULT_STORE_METRICS_PORT
    """The support store's Prometheus metrics (-1: off)."""
    instances: int = 2
    """Concurrent instances of crnet_segment."""
    store_max_entries: int = DEFAULT_MAX_ENTRIES
    store_max_mb: float = DEFAULT_MAX_BYTES / 2**20
    store_ttl_s: float = DEFAULT_TTL_S
    """Drop a support set unused this long (0: never)."""
    log_verbose: int = 0
    """Triton's log level."""
    limits: RequestLimits = RequestLimits()
    """Bounds on one request (id length, pixels, K, request size), checked before work."""
    outlive_parent: bool = False
    """Keep serving when the parent process exits (default: stop, as on SIGTERM)."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """HTTP connections open at once, and gRPC calls in progress at once; more are refused
    (HTTP 503, gRPC RESOURCE_EXHAUSTED) rather than queued."""
    client_timeout_s: float = DEFAULT_TIMEOUT_S
    """An HTTP client silent this long (mid-request or idle between requests) is dropped."""


def serve(args: ServeOptions, ready: Callable[[], None] | None = None) -> None:
    """Load the Segmenter, start Triton with the two models, block until SIGINT/SIGTERM or
    the parent's death; on the way out end every child and remove the shared memory."""
    from crnet.runtime import Segmenter
    from crnet.serve import lifecycle

    lifecycle.adopt_orphans()
    if not args.outlive_parent:
        lifecycle.stop_with_parent(os.getppid())
    restore_signals = lifecycle.stop_on_signals()
    shared_memory = lifecycle.SharedMemoryWatch()
    options = {"threads": args.threads} if args.threads else {}
    segmenter = None
    metrics = None
    try:
        segmenter = Segmenter(args.bundle, backend=args.backend, precision=args.precision,
                              **options)
        store: SupportStore = SupportStore(args.store_max_entries,
                                           int(args.store_max_mb * 2**20), args.store_ttl_s)
        service = SupportService(segmenter, store, args.limits)
        metrics = (start_store_metrics(store, args.host, args.store_metrics_port)
                   if args.store_metrics_port >= 0 else None)
        print(listening_line(args), flush=True)
        run_triton(args, service, ready)
    except KeyboardInterrupt:
        LOG.info("stopping")
    finally:
        if metrics is not None:
            metrics.shutdown()
        if segmenter is not None:
            segmenter.close()
        shared_memory.snapshot()
        ended = lifecycle.end_children()
        removed = lifecycle.remove_shared_memory() + shared_memory.remove_left()
        if ended or removed:
            LOG.warning("after Triton stopped: ended %s; removed %d shared-memory files",
                        ", ".join(ended) or "no process", len(removed))
        restore_signals()


def run_triton(args: ServeOptions, service: SupportService,
               ready: Callable[[], None] | None) -> None:
    """Start Triton with both models loaded at its start, serve until interrupted.

    The models are written to a local model store before tritonserver starts, which
    loads them before it opens its endpoints, and the public front ends open after that:
    ``/v2/health/ready`` cannot answer ready while crnet_support or crnet_segment is
    missing.
    """
    import tempfile

    from pytriton.triton import Triton, TritonLifecyclePolicy
    from pytriton.utils.workspace import Workspace

    from crnet.serve.proxy_model import adapt_proxy_models

    ports = internal_ports()
    config = triton_config(ports, args.log_verbose)
    policy = TritonLifecyclePolicy(launch_triton_on_startup=False, local_model_store=True)
    with tempfile.TemporaryDirectory(prefix="crnet-serve-") as directory:
        workspace = Workspace(Path(directory) / "workspace")
        with python_backend_env(), Triton(config=config, workspace=workspace,
                                          triton_lifecycle_policy=policy) as triton:
            bind_models(triton, service, args.instances)
            adapt_proxy_models(workspace.model_store_path, (SUPPORT_MODEL, SEGMENT_MODEL),
                               args.limits)
            triton.run()
            with running(front_ends(args, ports, service.store)):
                LOG.info("serving %s (%s, %s) on %s: http %d, grpc %d, metrics %d (Triton "
                         "on %s: http %d, grpc %d, metrics %d)", args.bundle,
                         service.segmenter.backend_name, service.segmenter.precision,
                         args.host, args.http_port, args.grpc_port, args.metrics_port,
                         TRITON_HOST, ports.http, ports.grpc, ports.metrics)
                print(f"crnet serve: ready; http {args.host}:{args.http_port}, grpc "
                      f"{args.host}:{args.grpc_port}", flush=True)
                if ready is not None:
                    ready()
                triton.serve()


def serving_problem(bundle: Path) -> str | None:
    """Why `crnet serve` cannot serve ``bundle`` here (the serve extra, the bundle), or None."""
    problem = serve_problem()
    if problem is not None:
        return problem
    if not (Path(bundle) / "manifest.json").is_file():
        return (f"{bundle} is not a bundle (no manifest.json); make one with "
                "`crnet export --out DIR`")
    return None
