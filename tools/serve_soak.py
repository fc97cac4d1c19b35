"""Soak and abuse test of `crnet serve`, on loopback only: attacks, a mixed load, a stop.

    python tools/serve_soak.py --crnet serve-env/bin/crnet --bundle deploy-out/bundle
    python tools/serve_soak.py --crnet serve-env/bin/crnet --bundle B --minutes 1 --json out.json

Starts `crnet serve BUNDLE` on free loopback ports, checks that it answers ready only with
both models loaded, then

1. runs each attack once or more (a 1 MB support_id 200 times, a bad mask, a 1x1 image, an
   unknown and a non-UTF-8 id, K=0, K over the bound, a 10,000x10,000 image over HTTP and
   over gRPC, a chunked upload, a request to unload a model), expecting a client error
   (HTTP 4xx, or gRPC INVALID_ARGUMENT, RESOURCE_EXHAUSTED, PERMISSION_DENIED) with a
   one-line message and no traceback, and checks after them that both models are still
   loaded, that crnet_support still registers a support, and how much the server's
   process tree grew over the attacks;
2. runs a mixed load for ``--warmup-s`` (default 60) plus ``--minutes`` (default 10)
   with ``--clients`` threads: valid registrations and segmentations with the attacks
   mixed in; RSS growth is measured from the end of the warm-up;
3. stops the server with SIGTERM and looks for what is left: processes of its tree and
   its shared-memory files in /dev/shm.

It prints what it held: requests served, errors by class, stalls (a request slower than
``--stall-s``), the RSS of the server's process tree at the start and end of the load, and
the processes and files left after the stop. Exit status 0 when the targets held (0 stalls,
every attack refused cleanly, no 5xx, nothing left, RSS growth under ``--max-growth-mb``),
1 otherwise. Needs crnet-deploy with the ``remote`` extra (numpy, tritonclient[http]) here,
and the ``serve`` extra in the environment of ``--crnet``; the process-tree and
shared-memory bookkeeping is crnet.serve.lifecycle's, the same the server cleans up with.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crnet.serve.http_front import free_loopback_port
from crnet.serve.lifecycle import (
    descendants,
    mapped_shared_memory,
    process_running,
    shared_memory_files,
)

HOST = "127.0.0.1"
SIZE = 96  # side of the valid images sent
ATTACKS = ("long_id", "bad_mask", "one_pixel", "unknown_id", "non_utf8_id", "k0",
           "too_many_shots", "unload_model", "chunked_upload", "huge_image",
           "grpc_huge_image")
REPEATS = {"long_id": 200, "huge_image": 10, "grpc_huge_image": 10}
HUGE = ("huge_image", "grpc_huge_image")
LOAD_ATTACKS = tuple(name for name in ATTACKS if name not in HUGE)
"""The huge images run in the attack phase only, where the tree's growth over them is
measured: each is a 286 MiB upload from this process, which would crowd the load's own
requests out of the machine's cores."""
CLIENT_ERRORS = ("400 ", "403 ", "411 ", "413 ", "StatusCode.INVALID_ARGUMENT ",
                 "StatusCode.RESOURCE_EXHAUSTED ", "StatusCode.PERMISSION_DENIED ")
"""How an attack must be answered: a client error, one line."""
STORE_MAX_MB = 8
"""The soak's support store bound (--store-max-mb), so RSS growth measures leaks, not a
store filling up to its default 512 MiB by design."""


# -- the server's process tree -----------------------------------------------------------


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc."""
    return [pid, *descendants(pid)]


def rss_mb(pids: list[int]) -> float:
    """The summed resident set size of ``pids`` in MiB (shared pages counted per process)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024




@dataclass
class Server:
    """A `crnet serve` subprocess on free loopback ports."""

    crnet: str
    bundle: Path
    log: Path
    extra: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    seen: set[int] = field(default_factory=set)
    shm_seen: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"{HOST}:{self.ports['http']}"

    def start(self, timeout_s: float = 300.0) -> float:
        """Start it; the seconds until it printed ready."""
        if not self.ports:
            self.ports = {name: free_loopback_port()
                          for name in ("http", "grpc", "metrics", "store")}
        command = [self.crnet, "serve", str(self.bundle), "--host", HOST,
                   "--http-port", str(self.ports["http"]), "--grpc-port",
                   str(self.ports["grpc"]), "--metrics-port", str(self.ports["metrics"]),
                   "--store-metrics-port", str(self.ports["store"]), "--threads", "1",
                   "--store-max-mb", str(STORE_MAX_MB), *self.extra]
        began = time.monotonic()
        with open(self.log, "wb") as handle:
            self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        while time.monotonic() - began < timeout_s:
            if self.process.poll() is not None:
                raise SystemExit(f"crnet serve exited with {self.process.returncode}:\n"
                                 + self.log.read_text(errors="replace")[-3000:])
            if b"crnet serve: ready" in self.log.read_bytes():
                self.watch()
                return time.monotonic() - began
            self.watch()
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"crnet serve not ready in {timeout_s:g} s")

    def watch(self) -> list[int]:
        """The pids of its tree now (remembered, with the /dev/shm files they map, to
        look for them after the stop)."""
        pids = tree(self.process.pid) if self.process is not None else []
        self.seen.update(pids)
        self.shm_seen.update(path.name for path in mapped_shared_memory(pids))
        return pids

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> dict[str, Any]:
        """Send ``sig``, wait for the exit; what was left behind."""
        assert self.process is not None
        pid = self.process.pid
        self.watch()
        began = time.monotonic()
        self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        seconds = time.monotonic() - began
        time.sleep(1.0)  # let orphans, if any, show up as such
        left = sorted(p for p in self.seen if p != pid and process_running(p))
        for leftover in left:  # the processes this run started: end them
            with_suppressed(os.kill, leftover, signal.SIGKILL)
        if code is None:
            with_suppressed(os.killpg, pid, signal.SIGKILL)
        return {"exit_code": code, "stop_seconds": round(seconds, 1),
                "processes_left": left,
                "shm_files_left": sorted({path.name for path in shared_memory_files(pid)} | {
                    name for name in self.shm_seen if (Path("/dev/shm") / name).exists()})}


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``condition`` every 0.1 s until it holds (True) or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())


def with_suppressed(function: Callable[..., Any], *args: Any) -> None:
    """Call ``function(*args)``, ignoring a process that is gone already."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        function(*args)


# -- requests ----------------------------------------------------------------------------


def support_set(rng: np.random.Generator, shots: int = 1, size: int = SIZE
                ) -> tuple[np.ndarray, np.ndarray]:
    """``shots`` random images with a square object mask each."""
    images = rng.integers(0, 255, (shots, size, size, 3), dtype=np.uint8)
    masks = np.zeros((shots, size, size), np.uint8)
    top = int(rng.integers(5, size // 2))
    masks[:, top:top + size // 3, 10:10 + size // 3] = 1
    return images, masks


class Client:
    """One tritonclient HTTP connection (a client is not shared between threads)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        import tritonclient.http as http

        self.http = http
        self.client = http.InferenceServerClient(url, connection_timeout=timeout_s,
                                                 network_timeout=timeout_s)

    def _input(self, name: str, array: np.ndarray, datatype: str) -> Any:
        tensor = self.http.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        return tensor

    def register(self, images: np.ndarray, masks: np.ndarray) -> bytes:
        result = self.client.infer("crnet_support", [self._input("images", images, "UINT8"),
                                                     self._input("masks", masks, "UINT8")])
        return bytes(result.as_numpy("support_id")[0])

    def segment(self, key: bytes, image: np.ndarray) -> np.ndarray:
        result = self.client.infer(
            "crnet_segment", [self._input("support_id", np.array([key], dtype=np.object_),
                                          "BYTES"), self._input("image", image, "UINT8")])
        return np.asarray(result.as_numpy("mask"))

    def close(self) -> None:
        self.client.close()


class HttpAnswer(Exception):
    """A plain HTTP request's error answer, classified like tritonclient's errors."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code

    def status(self) -> str:
        return str(self.code)


def plain_post(url: str, path: str, body: bytes | None = None, chunked: bool = False) -> None:
    """POST ``body`` to ``path`` (in chunks when ``chunked``); HttpAnswer for an error."""
    import http.client

    host, port = url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        if chunked:
            connection.request("POST", path, body=iter([body or b"{}"]),
                               encode_chunked=True)
        else:
            connection.request("POST", path, body=body or b"{}")
        answer = connection.getresponse()
        text = answer.read().decode(errors="replace")
    finally:
        connection.close()
    if answer.status >= 400:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            text = json.loads(text)["error"]
        raise HttpAnswer(answer.status, text)


def grpc_segment(url: str, image: np.ndarray, timeout_s: float) -> None:
    """A crnet_segment request over gRPC (tritonclient.grpc)."""
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(url)
    try:
        key = grpc.InferInput("support_id", [1], "BYTES")
        key.set_data_from_numpy(np.array([b"0" * 32], dtype=np.object_))
        frame = grpc.InferInput("image", list(image.shape), "UINT8")
        frame.set_data_from_numpy(image)
        client.infer("crnet_segment", [key, frame], client_timeout=timeout_s)
    finally:
        client.close()


def attack(client: Client, name: str, key: bytes, rng: np.random.Generator,
           server: Server | None = None) -> None:
    """Send the attack ``name`` (each one must be refused); the last three need
    ``server``, for its URL and gRPC port."""
    images, masks = support_set(rng)
    image = images[0]
    if name == "long_id":
        client.segment(b"a" * (1 << 20), image)
    elif name == "bad_mask":
        client.register(images, np.full_like(masks, 7))
    elif name == "one_pixel":
        client.segment(key, np.zeros((1, 1, 3), np.uint8))
    elif name == "unknown_id":
        client.segment(b"0123456789abcdef0123456789abcdef", image)
    elif name == "non_utf8_id":
        client.segment(b"\xff\xfe\xfd", image)
    elif name == "k0":
        client.register(images[:0], masks[:0])
    elif name == "too_many_shots":
        many, many_masks = support_set(rng, shots=64, size=16)
        client.register(many, many_masks)
    elif name == "huge_image":
        client.segment(key, np.zeros((10_000, 10_000, 3), np.uint8))
    elif server is None:
        raise ValueError(f"attack {name} needs the server")
    elif name == "unload_model":
        plain_post(server.url, "/v2/repository/models/crnet_segment/unload")
    elif name == "chunked_upload":
        plain_post(server.url, "/v2/models/crnet_segment/infer", b"{}", chunked=True)
    elif name == "grpc_huge_image":
        grpc_segment(f"{HOST}:{server.ports['grpc']}", np.zeros((10_000, 10_000, 3),
                                                                 np.uint8), 120.0)
    else:
        raise ValueError(name)


def classify(error: BaseException) -> str:
    """An error's class for the summary: HTTP status and crnet tag, or what failed."""
    text = str(error)
    status = getattr(error, "status", lambda: None)()
    tag = text.split("[crnet:", 1)[1].split("]", 1)[0] if "[crnet:" in text else None
    if tag is None and "received message larger than max" in text.lower():
        tag = "size"  # gRPC's own refusal, from the message's length prefix
    if "Traceback" in text or 'File "' in text or "\n" in text.strip():
        return f"{status} multi-line or traceback"
    if status is not None:
        return f"{status} {tag or 'untagged'}"
    return f"transport {type(error).__name__}"


@dataclass
class Tally:
    """Counts shared by the load threads."""

    stall_s: float
    counts: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    stalls: list[str] = field(default_factory=list)
    huge: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def timed(self, what: str, call: Callable[[], Any]) -> Any:
        """Run ``call``, counting its result under ``what``; None when it raised. The
        upload of a huge image takes its own time, so it is timed apart, never a stall."""
        began = time.monotonic()
        result, outcome = None, "ok"
        try:
            result = call()
        except Exception as error:  # noqa: BLE001 - every failure is counted
            outcome = classify(error)
        seconds = time.monotonic() - began
        with self.lock:
            self.counts[f"{what}: {outcome}"] += 1
            if what.removeprefix("attack ") in HUGE:
                self.huge.append(seconds)
                return result
            self.latencies.append(seconds)
            if seconds > self.stall_s:
                self.stalls.append(f"{what} took {seconds:.1f} s ({outcome})")
        return result


# -- the phases ----------------------------------------------------------------------------


def readiness(server: Server) -> dict[str, int]:
    """HTTP status of /v2/health/ready and of each model's ready endpoint."""
    statuses = {}
    for name, path in (("server", "/v2/health/ready"),
                       ("crnet_support", "/v2/models/crnet_support/ready"),
                       ("crnet_segment", "/v2/models/crnet_segment/ready")):
        try:
            with urllib.request.urlopen(f"http://{server.url}{path}", timeout=10) as answer:
                statuses[name] = answer.status
        except urllib.error.HTTPError as error:
            statuses[name] = error.code
        except OSError:
            statuses[name] = 0
    return statuses


def run_attacks(server: Server, tally: Tally, timeout_s: float) -> dict[str, Any]:
    """Each attack (REPEATS times); then one valid registration."""
    rng = np.random.default_rng(1)
    client = Client(server.url, timeout_s)
    try:
        key = client.register(*support_set(rng))
        before = rss_mb(server.watch())
        for name in ATTACKS:
            for _ in range(REPEATS.get(name, 1)):
                tally.timed(f"attack {name}",
                            lambda n=name: attack(client, n, key, rng, server))
        after_attacks = rss_mb(server.watch())
        began = time.monotonic()
        after = tally.timed("register after the attacks",
                            lambda: client.register(*support_set(rng)))
        return {"crnet_support_after_attacks_s": round(time.monotonic() - began, 3),
                "crnet_support_responsive": after is not None,
                "models_ready_after_attacks": readiness(server),
                "rss_growth_over_attacks_mb": round(after_attacks - before, 1)}
    finally:
        client.close()


def load_worker(server: Server, tally: Tally, deadline: float, seed: int,
                timeout_s: float) -> None:
    """Until ``deadline``: 70% segmentations, 15% registrations, 15% attacks (all but
    the huge images)."""
    rng = np.random.default_rng(seed)
    chooser = random.Random(seed)
    client = Client(server.url, timeout_s)
    try:
        key = tally.timed("register", lambda: client.register(*support_set(rng)))
        while time.monotonic() < deadline:
            draw = chooser.random()
            if draw < 0.15 or key is None:
                key = tally.timed("register", lambda: client.register(*support_set(rng))) \
                    or key
            elif draw < 0.85:
                image = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
                tally.timed("segment", lambda k=key, i=image: client.segment(k, i))
            else:
                name = chooser.choice(LOAD_ATTACKS)
                tally.timed(f"attack {name}",
                            lambda n=name, k=key: attack(client, n, k, rng, server))
    finally:
        client.close()


def run_load(server: Server, tally: Tally, minutes: float, clients: int,
             timeout_s: float, warmup_s: float = 0.0) -> dict[str, Any]:
    """The mixed load for ``warmup_s`` + ``minutes``, the tree's RSS sampled every 5 s.
    Growth is measured from the end of the warm-up (ONNX Runtime's arenas and the
    support store fill up in the first seconds of load) to the end; the samples and the
    RSS when the load began are kept in the summary too."""
    first_rss = rss_mb(server.watch())
    began = time.monotonic()
    deadline = began + warmup_s + minutes * 60
    threads = [threading.Thread(target=load_worker,
                                args=(server, tally, deadline, seed, timeout_s))
               for seed in range(clients)]
    for thread in threads:
        thread.start()
    samples = [(0.0, round(first_rss, 1))]
    start_rss = first_rss if warmup_s <= 0 else None
    while any(thread.is_alive() for thread in threads):
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
        now = round(rss_mb(server.watch()), 1)
        samples.append((round(time.monotonic() - began, 1), now))
        if start_rss is None and time.monotonic() - began >= warmup_s:
            start_rss = now
    for thread in threads:
        thread.join()
    end_rss = rss_mb(server.watch())
    start_rss = end_rss if start_rss is None else start_rss
    return {"rss_load_began_mb": round(first_rss, 1), "rss_start_mb": round(start_rss, 1),
            "rss_end_mb": round(end_rss, 1), "rss_peak_mb": max(rss for _, rss in samples),
            "rss_growth_mb": round(end_rss - start_rss, 1), "warmup_s": warmup_s,
            "rss_samples": samples}


def verdict(summary: dict[str, Any], max_growth_mb: float) -> list[str]:
    """The targets that did not hold."""
    failed = []
    if summary["stalls"]:
        failed.append(f"{len(summary['stalls'])} stalls")
    bad = {key: count for key, count in summary["outcomes"].items()
           if key.startswith("attack") and not (
               key.split(": ", 1)[1].startswith(CLIENT_ERRORS)
               and "untagged" not in key and "traceback" not in key)}
    bad.update({key: count for key, count in summary["outcomes"].items()
                if not key.startswith("attack") and not key.endswith(": ok")})
    if bad:
        failed.append(f"unexpected outcomes {bad}")
    if not summary["ready"]["ready_means_loaded"]:
        failed.append(f"readiness {summary['ready']}")
    attacks = summary["attacks"]
    if not attacks["crnet_support_responsive"]:
        failed.append("crnet_support unresponsive after the attacks")
    if set(attacks["models_ready_after_attacks"].values()) != {200}:
        failed.append(f"not ready after the attacks: {attacks['models_ready_after_attacks']}")
    if attacks["rss_growth_over_attacks_mb"] >= max_growth_mb:
        failed.append(f"RSS grew {attacks['rss_growth_over_attacks_mb']} MiB over the attacks")
    if summary["rss"]["rss_growth_mb"] >= max_growth_mb:
        failed.append(f"RSS grew {summary['rss']['rss_growth_mb']} MiB")
    stop = summary["stop"]
    if stop["processes_left"] or stop["shm_files_left"] or stop["exit_code"] is None:
        failed.append(f"stop left {stop}")
    return failed


def print_summary(summary: dict[str, Any]) -> None:
    """The summary as text."""
    rss, stop = summary["rss"], summary["stop"]
    served = sum(count for key, count in summary["outcomes"].items() if key.endswith(": ok"))
    print(f"crnet serve soak: {summary['minutes']:g} min of load after a "
          f"{summary['rss']['warmup_s']:g} s warm-up, {summary['clients']} clients, "
          f"ready in {summary['start_seconds']:.1f} s, ready endpoints {summary['ready']}")
    print(f"requests: {summary['requests']} ({served} served, "
          f"{summary['requests'] - served} refused or failed); p50 "
          f"{summary['p50_ms']:.1f} ms, p99 {summary['p99_ms']:.1f} ms, max "
          f"{summary['max_ms']:.0f} ms")
    for key, count in sorted(summary["outcomes"].items()):
        print(f"  {count:7d}  {key}")
    print(f"stalls (> {summary['stall_s']:g} s): {len(summary['stalls'])}"
          + "".join(f"\n  {line}" for line in summary["stalls"][:10]))
    print(f"crnet_support after the attacks: {summary['attacks']}")
    print(f"10,000x10,000 image refusals, HTTP and gRPC (a 286 MiB request each): "
          f"{summary['huge_image_s']} s; the tree grew "
          f"{summary['attacks']['rss_growth_over_attacks_mb']} MiB over all the attacks")
    print(f"RSS of the process tree: {rss['rss_before_attacks_mb']} MiB before the attacks, "
          f"{rss['rss_load_began_mb']} MiB when the load began, {rss['rss_start_mb']} MiB "
          f"after its {rss['warmup_s']:g} s warm-up (start), {rss['rss_end_mb']} MiB at the "
          f"end: growth {rss['rss_growth_mb']} MiB; peak {rss['rss_peak_mb']} MiB")
    print(f"stop (SIGTERM): exit {stop['exit_code']} after {stop['stop_seconds']} s; "
          f"processes left {len(stop['processes_left'])} {stop['processes_left']}, "
          f"shared-memory files left {len(stop['shm_files_left'])} {stop['shm_files_left']}")
    print("targets held" if not summary["failed"] else f"targets missed: {summary['failed']}")


def soak(args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """Start, attack, load, stop; the summary."""
    server = Server(args.crnet, args.bundle, log, list(args.serve_args))
    start_seconds = server.start()
    tally = Tally(args.stall_s)
    try:
        ready = readiness(server)
        ready["ready_means_loaded"] = ready["server"] != 200 or (
            ready["crnet_support"] == 200 and ready["crnet_segment"] == 200)
        warm = Client(server.url, args.timeout_s)
        for index in range(5):  # warm-up, not counted
            key = warm.register(*support_set(np.random.default_rng(100 + index)))
            warm.segment(key, np.zeros((SIZE, SIZE, 3), np.uint8))
        warm.close()
        before_attacks = rss_mb(server.watch())
        attacks = run_attacks(server, tally, args.timeout_s)
        rss = run_load(server, tally, args.minutes, args.clients, args.timeout_s,
                       args.warmup_s)
        rss["rss_before_attacks_mb"] = round(before_attacks, 1)
    finally:
        stop = server.stop()
    latencies = np.array(tally.latencies or [0.0]) * 1000
    summary = {"minutes": args.minutes, "clients": args.clients, "stall_s": args.stall_s,
               "start_seconds": start_seconds, "ready": ready, "attacks": attacks,
               "requests": len(tally.latencies) + len(tally.huge), "outcomes": dict(tally.counts),
               "p50_ms": float(np.percentile(latencies, 50)),
               "p99_ms": float(np.percentile(latencies, 99)),
               "max_ms": float(latencies.max()), "stalls": tally.stalls, "rss": rss,
               "huge_image_s": [round(seconds, 1) for seconds in tally.huge],
               "stop": stop}
    summary["failed"] = verdict(summary, args.max_growth_mb)
    return summary


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crnet", default="crnet",
                        help="the crnet command of an environment with the serve extra")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="length of the mixed load (default 10)")
    parser.add_argument("--clients", type=int, default=4, help="load threads (default 4)")
    parser.add_argument("--warmup-s", type=float, default=60.0,
                        help="seconds of the same load before the start RSS is taken "
                             "(default 60)")
    parser.add_argument("--stall-s", type=float, default=10.0,
                        help="a request slower than this counts as a stall (default 10)")
    parser.add_argument("--timeout-s", type=float, default=120.0,
                        help="network timeout of one request (default 120)")
    parser.add_argument("--max-growth-mb", type=float, default=50.0,
                        help="RSS growth target over the load (default 50 MiB)")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--log", type=Path, help="the server's log (default: a temporary "
                                                 "file, removed when the targets hold)")
    parser.add_argument("serve_args", nargs="*",
                        help="more `crnet serve` arguments, after --")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not (args.bundle / "manifest.json").is_file():
        print(f"serve_soak: {args.bundle} is not a bundle (no manifest.json)", file=sys.stderr)
        return 2
    log = args.log or Path(tempfile.mkstemp(prefix="crnet-soak-", suffix=".log")[1])
    summary = soak(args, log)
    print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if summary["failed"]:
        print(f"server log: {log}")
        return 1
    if args.log is None:
        log.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
