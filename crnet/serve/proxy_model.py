"""PyTriton's proxy model as `crnet serve` runs it: one-line errors, a reliable start.

PyTriton runs each model's inference callable in the serving process behind a
Python-backend proxy model (``model.py`` in its model store) that Triton runs in a stub
process. An exception raised by the callable reaches the proxy as text with two Python
tracebacks (file paths included), which Triton answers as an internal error (HTTP 500).
``answer_tagged_errors`` appends a wrapper to that proxy's ``model.py``: when the error
text carries a ``[crnet:<Kind>] <message>`` tag (every error crnet.serve.server raises),
the request is answered with that one line alone, and with Triton's INVALID_ARG code (HTTP
400, gRPC INVALID_ARGUMENT) when ``Kind`` is a client error, INTERNAL otherwise. Errors
without the tag keep PyTriton's own answer.

The same appended code retries PyTriton's instance handshake: the second instance of a
model connects to a socket the first one creates, and on a busy machine it can find the
file before the first instance listens on it (ConnectionRefusedError, the model fails to
load); it now retries for up to HANDSHAKE_RETRY_S seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from crnet.serve.limits import REQUEST_SIZE_MESSAGE, RequestLimits

CLIENT_KINDS = ("InputError", "NoSupportError", "ProfileError", "RequestLimitError",
                "SupportReplacedError", "UnknownSupportError")
"""Error classes that are the client's fault: answered as INVALID_ARG (HTTP 400)."""
MARKER = "# crnet serve: tagged errors answered as one line, handshake retried"
HANDSHAKE_RETRY_S = 30.0

_WRAPPER = '''

{marker}
import re as _crnet_re

_CRNET_TAG = _crnet_re.compile(r"\\[crnet:(\\w+)\\] ([^\\n]*)")
_CRNET_CLIENT_KINDS = frozenset({kinds!r})
_crnet_proxy_execute = TritonPythonModel.execute


def _crnet_answer(kind, message):
    """An error response carrying ``[crnet:kind] message``."""
    code = (pb_utils.TritonError.INVALID_ARG if kind in _CRNET_CLIENT_KINDS
            else pb_utils.TritonError.INTERNAL)
    error = pb_utils.TritonError("[crnet:" + kind + "] " + message.strip(), code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def _crnet_refusal(request):
    """(kind, message) refusing ``request`` before PyTriton copies it on, or None: an
    input with an empty dimension (PyTriton cannot pass one on) or inputs larger than
    the request-size bound, both seen from the shapes alone."""
    total = 0
    for tensor in request.inputs():
        array = tensor.as_numpy()
        if 0 in array.shape:
            return ("InputError", tensor.name() + " of shape " + str(list(array.shape))
                    + " is empty: send at least one support image (K >= 1) and images of "
                    "at least 8x8 pixels")
        if array.dtype == object:
            total += sum(len(item) for item in array.reshape(-1)
                         if isinstance(item, (bytes, str)))
        else:
            total += array.nbytes
    if total > {max_bytes!r}:
        return ("RequestLimitError", {size_message!r}.format(mib=total / 2**20))
    return None


def _crnet_execute(self, requests):
    """The proxy's execute behind the checks of ``_crnet_refusal``; a [crnet:Kind] error
    becomes that one line, per request."""
    answers = [None] * len(requests)
    passed = []
    for index, request in enumerate(requests):
        refusal = _crnet_refusal(request)
        if refusal is None:
            passed.append(index)
        else:
            answers[index] = _crnet_answer(*refusal)
            logger = getattr(pb_utils, "Logger", None)
            if logger is not None:
                logger.log_warn("crnet serve refused a request before the model: [crnet:"
                                + refusal[0] + "] " + refusal[1])
    if passed:
        try:
            results = _crnet_proxy_execute(self, [requests[index] for index in passed])
        except pb_utils.TritonModelException as error:
            tags = _CRNET_TAG.findall(str(error))
            if not tags:
                raise
            results = [_crnet_answer(*tags[-1]) for _ in passed]
        for index, result in zip(passed, results):
            answers[index] = result
    return answers


TritonPythonModel.execute = _crnet_execute
_crnet_handshake = get_config_from_handshake_server


def get_config_from_handshake_server(socket_path, timeout_s=1.0):
    """PyTriton's handshake, retried while the first instance's socket is not ready."""
    import time as _crnet_time

    deadline = _crnet_time.monotonic() + {retry_s!r}
    while True:
        try:
            return _crnet_handshake(socket_path, timeout_s)
        except (ConnectionRefusedError, FileNotFoundError, TimeoutError):
            if _crnet_time.monotonic() > deadline:
                raise
            _crnet_time.sleep(0.05)
'''


def wrapper_source(limits: RequestLimits | None = None,
                   client_kinds: Iterable[str] = CLIENT_KINDS) -> str:
    """The Python source appended to a proxy ``model.py``."""
    limits = limits if limits is not None else RequestLimits()
    size_message = REQUEST_SIZE_MESSAGE.replace("{limit:g}", f"{limits.max_request_mb:g}")
    return _WRAPPER.format(marker=MARKER, kinds=tuple(sorted(client_kinds)),
                           retry_s=HANDSHAKE_RETRY_S, max_bytes=limits.max_request_bytes,
                           size_message=size_message)


def adapt_proxy_models(model_store: Path, model_names: Iterable[str],
                       limits: RequestLimits | None = None) -> list[Path]:
    """Append the wrapper to each named model's proxy ``model.py`` under ``model_store``
    (once; a file that has it already is left alone); the files changed."""
    from crnet.runtime.backends.base import BackendError

    changed = []
    for name in model_names:
        found = sorted((Path(model_store) / name).glob("*/model.py"))
        if not found:
            raise BackendError(f"no proxy model.py for {name} under {model_store}: this "
                              "PyTriton lays out its model store differently")
        for path in found:
            text = path.read_text()
            if MARKER in text:
                continue
            if "class TritonPythonModel" not in text:
                raise BackendError(f"{path} has no TritonPythonModel: not a PyTriton proxy")
            path.write_text(text + wrapper_source(limits))
            changed.append(path)
    return changed
