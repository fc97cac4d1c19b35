"""The code `crnet serve` appends to PyTriton's proxy model, run here against stand-ins for
Triton's ``triton_python_backend_utils`` and the proxy (the real ones run in
test_server.py)."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crnet.runtime.backends.base import BackendError
from crnet.serve.limits import RequestLimits
from crnet.serve.proxy_model import MARKER, adapt_proxy_models, wrapper_source

TRACEBACK = ('Model execute error: Traceback (most recent call last):\n  File "/x/model.py", '
             'line 1, in execute\ncrnet.serve.server.RequestError: [crnet:{kind}] {text}\n')


class TritonError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message: str, code: str) -> None:
        self.message, self.code = message, code


class Response:
    def __init__(self, output_tensors: list[Any], error: TritonError | None = None) -> None:
        self.outputs, self.error = output_tensors, error


class TritonModelException(Exception):
    pass


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class Request:
    def __init__(self, **arrays: np.ndarray) -> None:
        self._inputs = [Tensor(name, array) for name, array in arrays.items()]

    def inputs(self) -> list[Tensor]:
        return self._inputs


def proxy(limits: RequestLimits, execute: Any, handshake: Any = None) -> Any:
    """A module namespace as the proxy model.py defines it, with the wrapper appended."""
    pb_utils = types.SimpleNamespace(TritonError=TritonError, InferenceResponse=Response,
                                     TritonModelException=TritonModelException)
    namespace: dict[str, Any] = {
        "pb_utils": pb_utils,
        "TritonPythonModel": type("TritonPythonModel", (), {"execute": execute}),
        "get_config_from_handshake_server": handshake or (lambda path, timeout_s=1.0: {}),
    }
    exec(compile(wrapper_source(limits), "model.py", "exec"), namespace)  # noqa: S102
    return namespace


def image_request(side: int = 16) -> Request:
    return Request(support_id=np.array([b"ab"], dtype=object),
                   image=np.zeros((side, side, 3), np.uint8))


def test_a_tagged_client_error_becomes_one_line_invalid_arg() -> None:
    def execute(self: Any, requests: list[Any]) -> list[Any]:
        raise TritonModelException(TRACEBACK.format(kind="InputError", text="bad mask"))

    model = proxy(RequestLimits(), execute)["TritonPythonModel"]()
    [answer] = model.execute([image_request()])
    assert answer.error.code == "INVALID_ARG"
    assert answer.error.message == "[crnet:InputError] bad mask"


def test_a_tagged_server_error_is_one_line_internal_and_untagged_errors_pass() -> None:
    errors = iter([TRACEBACK.format(kind="BackendError", text="engine gone"), "no tag here"])

    def execute(self: Any, requests: list[Any]) -> list[Any]:
        raise TritonModelException(next(errors))

    model = proxy(RequestLimits(), execute)["TritonPythonModel"]()
    [answer] = model.execute([image_request()])
    assert (answer.error.code, answer.error.message) == ("INTERNAL",
                                                          "[crnet:BackendError] engine gone")
    with pytest.raises(TritonModelException, match="no tag here"):
        model.execute([image_request()])


def test_empty_and_oversized_requests_never_reach_the_proxy() -> None:
    reached: list[int] = []

    def execute(self: Any, requests: list[Any]) -> list[str]:
        reached.append(len(requests))
        return ["served"] * len(requests)

    model = proxy(RequestLimits(max_request_mb=0.01), execute)["TritonPythonModel"]()
    empty = Request(images=np.zeros((0, 16, 16, 3), np.uint8),
                    masks=np.zeros((0, 16, 16), np.uint8))
    answers = model.execute([empty, image_request(16), image_request(100)])
    assert reached == [1] and answers[1] == "served"  # only the valid one went on
    assert answers[0].error.code == "INVALID_ARG"
    assert answers[0].error.message.startswith("[crnet:InputError] images of shape [0, 16")
    assert answers[2].error.message == (
        "[crnet:RequestLimitError] request of 0.0 MiB is larger than the 0.01 MiB this "
        "server accepts (--max-request-mb); send smaller images")
    long_id = Request(support_id=np.array([b"a" * 20_000], dtype=object))
    [answer] = model.execute([long_id])  # BYTES count by their length
    assert "RequestLimitError" in answer.error.message


def test_the_handshake_is_retried_until_the_first_instance_listens() -> None:
    attempts: list[str] = []

    def handshake(path: str, timeout_s: float = 1.0) -> dict[str, str]:
        attempts.append(path)
        if len(attempts) < 3:
            raise ConnectionRefusedError(111, "Connection refused")
        return {"ok": "yes"}

    namespace = proxy(RequestLimits(), lambda self, requests: [], handshake)
    assert namespace["get_config_from_handshake_server"]("sock") == {"ok": "yes"}
    assert len(attempts) == 3


def test_adapt_appends_once_and_refuses_a_foreign_layout(tmp_path: Path) -> None:
    version = tmp_path / "crnet_segment" / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text("class TritonPythonModel:\n    pass\n")
    assert adapt_proxy_models(tmp_path, ["crnet_segment"]) == [version / "model.py"]
    assert adapt_proxy_models(tmp_path, ["crnet_segment"]) == []
    assert (version / "model.py").read_text().count(MARKER) == 1
    with pytest.raises(BackendError, match="no proxy model.py for crnet_support"):
        adapt_proxy_models(tmp_path, ["crnet_support"])
    (version / "model.py").write_text("print('something else')\n")
    with pytest.raises(BackendError, match="not a PyTriton proxy"):
        adapt_proxy_models(tmp_path, ["crnet_segment"])
