"""`crnet serve` started and stopped for real (a subprocess on loopback, from the serve
extra's own venv): ready only with both models loaded; SIGTERM under load, SIGINT and the
death of its parent leave no process of its tree and no shared-memory file. Uses the
server helpers of tools/serve_soak.py, which the soak itself runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crnet.serve.http_front import free_loopback_port
from crnet.serve.lifecycle import process_running, shared_memory_files
from tests.tool_modules import load_tool
from tests.venvs import clean_environment, tiny_bundle

REPO = Path(__file__).resolve().parents[3]


soak = load_tool("serve_soak")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle(tmp_path_factory)


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def poll_readiness(base: str, done: threading.Event, seen: list[tuple[int, int, int]]) -> None:
    """Until ``done``: each time the server says ready, ask both models at once."""
    while not done.is_set():
        if status(f"{base}/v2/health/ready") == 200:
            seen.append((200, status(f"{base}/v2/models/crnet_support/ready"),
                         status(f"{base}/v2/models/crnet_segment/ready")))
        time.sleep(0.005)


def load(url: str, stop: threading.Event, served: list[int]) -> None:
    """Segment requests back to back until ``stop`` (errors once the server stops)."""
    client = soak.Client(url, 30.0)
    rng = np.random.default_rng(0)
    try:
        key = client.register(*soak.support_set(rng))
        while not stop.is_set():
            client.segment(key, rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
            served.append(1)
    except Exception:  # noqa: BLE001 - the server went away under it: expected
        pass
    finally:
        client.close()


def test_ready_only_with_both_models_and_sigterm_under_load_leaves_nothing(
        serve_venv: Path, bundle: Path, tmp_path: Path) -> None:
    server = soak.Server(str(serve_venv / "crnet"), bundle, tmp_path / "serve.log")
    server.ports = {name: free_loopback_port() for name in ("http", "grpc", "metrics", "store")}
    done, seen = threading.Event(), []
    poller = threading.Thread(target=poll_readiness,
                              args=(f"http://{server.url}", done, seen))
    poller.start()
    try:
        server.start()
        time.sleep(0.5)
    finally:
        done.set()
        poller.join()
    assert seen, "the server never answered ready"
    assert all(answer == (200, 200, 200) for answer in seen), seen
    assert len(server.watch()) >= 4  # crnet serve, tritonserver and its stubs
    stop, served = threading.Event(), []
    clients = [threading.Thread(target=load, args=(server.url, stop, served))
               for _ in range(4)]
    for client in clients:
        client.start()
    assert soak.wait_until(lambda: len(served) >= 20, 60)
    left = server.stop(signal.SIGTERM)  # requests in flight
    stop.set()
    for client in clients:
        client.join(60)
    assert left["exit_code"] == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert left["processes_left"] == [] and left["shm_files_left"] == [], left


@pytest.mark.slow
def test_sigint_leaves_nothing(serve_venv: Path, bundle: Path, tmp_path: Path) -> None:
    server = soak.Server(str(serve_venv / "crnet"), bundle, tmp_path / "serve.log")
    server.start()
    left = server.stop(signal.SIGINT)
    assert left["exit_code"] == 0
    assert left["processes_left"] == [] and left["shm_files_left"] == [], left


PARENT = """
import subprocess, sys
with open(sys.argv[1], "wb") as log:
    child = subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT)
print(child.pid, flush=True)
child.wait()
"""


@pytest.mark.slow
def test_the_death_of_its_parent_stops_it_and_leaves_nothing(
        serve_venv: Path, bundle: Path, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    command = [str(serve_venv / "crnet"), "serve", str(bundle), "--threads", "1",
               *[arg for name in ("http", "grpc", "metrics", "store-metrics")
                 for arg in (f"--{name}-port", str(free_loopback_port()))]]
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(log), *command],
                              stdout=subprocess.PIPE, text=True, start_new_session=True,
                              env=clean_environment())
    assert parent.stdout is not None
    server_pid = int(parent.stdout.readline())
    seen: set[int] = set()

    def ready() -> bool:
        seen.update(soak.tree(server_pid))
        return b"crnet serve: ready" in log.read_bytes()

    assert soak.wait_until(ready, 300), log.read_text()[-3000:]
    seen.update(soak.tree(server_pid))
    parent.kill()  # SIGKILL: nothing of the parent runs any more
    parent.wait()
    gone = soak.wait_until(lambda: not process_running(server_pid), 60)
    time.sleep(1.0)
    left: list[Any] = [pid for pid in seen if process_running(pid)]
    for pid in left:
        soak.with_suppressed(os.kill, pid, signal.SIGKILL)
    assert gone, f"crnet serve still runs after its parent died:\n{log.read_text()[-3000:]}"
    assert left == [] and shared_memory_files(server_pid) == []


def passing_summary() -> dict[str, Any]:
    return {"stalls": [], "outcomes": {"attack k0: 400 InputError": 3, "segment: ok": 9,
                                       "attack huge_image: 413 RequestLimitError": 2,
                                       "attack grpc_huge_image: StatusCode.RESOURCE_EXHAUSTED "
                                       "size": 2},
            "ready": {"ready_means_loaded": True},
            "attacks": {"crnet_support_responsive": True, "rss_growth_over_attacks_mb": 4.0,
                        "models_ready_after_attacks": {"server": 200, "crnet_segment": 200}},
            "rss": {"rss_growth_mb": 3.0},
            "stop": {"exit_code": 0, "processes_left": [], "shm_files_left": []}}


@pytest.mark.parametrize(("change", "missed"), [
    (lambda s: s["stalls"].append("segment took 12.0 s (ok)"), "1 stalls"),
    (lambda s: s["outcomes"].update({"attack k0: 500 multi-line or traceback": 1}),
     "unexpected outcomes"),
    (lambda s: s["outcomes"].update({"segment: transport TimeoutError": 1}),
     "unexpected outcomes"),
    (lambda s: s["ready"].update(ready_means_loaded=False), "readiness"),
    (lambda s: s["attacks"].update(crnet_support_responsive=False), "unresponsive"),
    (lambda s: s["rss"].update(rss_growth_mb=50.0), "RSS grew 50.0 MiB"),
    (lambda s: s["attacks"].update(rss_growth_over_attacks_mb=1500.0),
     "RSS grew 1500.0 MiB over the attacks"),
    (lambda s: s["attacks"]["models_ready_after_attacks"].update(crnet_segment=400),
     "not ready after the attacks"),
    (lambda s: s["outcomes"].update({"attack unload_model: 200 untagged": 1}),
     "unexpected outcomes"),
    (lambda s: s["outcomes"].update({"attack huge_image: 500 untagged": 1}),
     "unexpected outcomes"),
    (lambda s: s["stop"].update(processes_left=[4321]), "stop left"),
    (lambda s: s["stop"].update(shm_files_left=["pytrtion1-a"]), "stop left"),
])
def test_the_soak_verdict_misses_each_target(change: Any, missed: str) -> None:
    assert soak.verdict(passing_summary(), 50.0) == []
    summary = passing_summary()
    change(summary)
    assert any(missed in line for line in soak.verdict(summary, 50.0))


def test_the_soak_classifies_one_line_answers_apart_from_tracebacks() -> None:
    class Answer(Exception):
        def __init__(self, text: str, code: str | None) -> None:
            super().__init__(text)
            self.code = code

        def status(self) -> str | None:
            return self.code

    assert soak.classify(Answer("[crnet:InputError] bad mask", "400")) == "400 InputError"
    assert soak.classify(Answer('Traceback (most recent call last):\n  File "x"', "500")) \
        == "500 multi-line or traceback"
    assert soak.classify(TimeoutError("timed out")) == "transport TimeoutError"
    assert soak.classify(Answer("Received message larger than max (300000000 vs. 68157440)",
                                "StatusCode.RESOURCE_EXHAUSTED")) == (
        "StatusCode.RESOURCE_EXHAUSTED size")
    assert soak.classify(soak.HttpAnswer(403, "[crnet:RequestError] not served here")) == (
        "403 RequestError")


@pytest.mark.slow
def test_the_soak_script_runs_end_to_end(serve_venv: Path, bundle: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = soak.main(["--crnet", str(serve_venv / "crnet"), "--bundle", str(bundle),
                      "--minutes", "0.1", "--clients", "2", "--json",
                      str(tmp_path / "soak.json"), "--log", str(tmp_path / "serve.log")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "targets held" in printed and "stalls (> 10 s): 0" in printed
    summary = json.loads((tmp_path / "soak.json").read_text())
    assert summary["outcomes"]["attack long_id: 400 RequestLimitError"] >= 200
    assert summary["stop"]["processes_left"] == [] == summary["stop"]["shm_files_left"]
