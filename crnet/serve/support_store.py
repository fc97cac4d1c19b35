"""A bounded, thread-safe store of encoded support sets, keyed by a content id (numpy only).

The server side of ``crnet serve``: a client registers its support once, gets an id, then
sends frames with the id. The store holds at most ``max_entries`` sets and ``max_bytes``
bytes of features; the least recently used set goes first, and with ``ttl_s`` a set not
used for that long expires. A missing id raises UnknownSupportError telling the client to
register again; ids are derived from the support's content, so registering the same
images and masks again (after an eviction or a server restart) gives the same id.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from crnet.runtime.files import write_bytes_atomic
from crnet.runtime.preprocess import InputError
from crnet.runtime.remote import UnknownSupportError

Value = TypeVar("Value")

DEFAULT_MAX_ENTRIES = 1024
DEFAULT_MAX_BYTES = 512 << 20  # 512 MiB: ~3,300 one-shot crnet-lite sets, ~300 of crnet-r50
DEFAULT_TTL_S = 0.0  # 0: no time-to-live, only the two bounds


def support_id(images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
               salt: str = "") -> str:
    """A content id (32 hex digits) of a support set: its shapes, dtypes and bytes.

    ``salt`` names what else the encoding depends on (model, precision), so that two
    servers with different models never share an id for different features.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(salt.encode())
    for kind, arrays in (("image", images), ("mask", masks)):
        for array in arrays:
            array = np.ascontiguousarray(array)
            digest.update(f"|{kind}:{array.dtype.str}:{array.shape}|".encode())
            digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


@dataclass
class _Entry(Generic[Value]):
    value: Value
    nbytes: int
    last_used: float


@dataclass(frozen=True)
class StoreStats:
    """Counters of a SupportStore, for logs and metrics."""

    entries: int
    bytes: int
    max_entries: int
    max_bytes: int
    ttl_s: float
    hits: int
    misses: int
    inserts: int
    evicted_lru: int
    expired: int


class SupportStore(Generic[Value]):
    """LRU store bounded by entry count and bytes, with an optional time-to-live.

    ``clock`` (seconds, monotonic) is injectable for tests.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_bytes: int = DEFAULT_MAX_BYTES, ttl_s: float = DEFAULT_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be 0 (off) or positive seconds, got {ttl_s}")
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self.ttl_s = float(ttl_s)
        self._clock = clock
        self._entries: OrderedDict[str, _Entry[Value]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = self._misses = self._inserts = self._evicted_lru = self._expired = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            self._expire(self._clock())
            return key in self._entries

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def put(self, key: str, value: Value, nbytes: int) -> None:
        """Insert (or refresh) ``key``; evict least recently used entries to fit."""
        if nbytes > self.max_bytes:
            raise InputError(
                f"this support set needs {nbytes / 2**20:.1f} MiB of features, more than the "
                f"server's whole support store ({self.max_bytes / 2**20:.1f} MiB, "
                "--store-max-mb); use fewer or smaller shots, or raise the limit")
        with self._lock:
            now = self._clock()
            self._expire(now)
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = _Entry(value, int(nbytes), now)
            self._bytes += int(nbytes)
            self._inserts += 1
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self._evicted_lru += 1

    def get(self, key: str) -> Value:
        """The value of ``key``, marked as most recently used; UnknownSupportError if absent."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                raise UnknownSupportError(
                    f"unknown support_id {key!r}: this server does not hold it (never "
                    "registered, evicted to keep the support store within its bounds, "
                    "expired, or the server restarted); register the support again with "
                    "crnet_support and use the id it returns")
            entry.last_used = now
            self._entries.move_to_end(key)
            self._hits += 1
            return entry.value

    def discard(self, key: str) -> None:
        """Remove ``key`` if present."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._bytes -= entry.nbytes

    def stats(self) -> StoreStats:
        """A snapshot of sizes and counters (expired entries dropped first)."""
        with self._lock:
            self._expire(self._clock())
            return StoreStats(len(self._entries), self._bytes, self.max_entries,
                              self.max_bytes, self.ttl_s, self._hits, self._misses,
                              self._inserts, self._evicted_lru, self._expired)

    def _expire(self, now: float) -> None:
        if not self.ttl_s:
            return
        # Entries are in last-used order, so the expired ones are at the front.
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.last_used <= self.ttl_s:
                break
            del self._entries[key]
            self._bytes -= entry.nbytes
            self._expired += 1


def prometheus_text(stats: StoreStats, prefix: str = "crnet_support_store") -> str:
    """The store's sizes and counters in Prometheus' text exposition format."""
    rows = [
        ("entries", "gauge", "support sets held", stats.entries),
        ("bytes", "gauge", "bytes of support features held", stats.bytes),
        ("max_entries", "gauge", "bound on support sets held", stats.max_entries),
        ("max_bytes", "gauge", "bound on bytes of support features held", stats.max_bytes),
        ("ttl_seconds", "gauge", "time-to-live of an unused support set (0: off)",
         stats.ttl_s),
        ("hits_total", "counter", "lookups of a held support id", stats.hits),
        ("misses_total", "counter", "lookups of an unknown support id", stats.misses),
        ("inserts_total", "counter", "support sets registered", stats.inserts),
        ("evictions_total", "counter", "support sets evicted to stay within the bounds",
         stats.evicted_lru),
        ("expired_total", "counter", "support sets dropped after the time-to-live",
         stats.expired),
    ]
    lines = []
    for name, kind, text, value in rows:
        lines += [f"# HELP {prefix}_{name} {text}", f"# TYPE {prefix}_{name} {kind}",
                  f"{prefix}_{name} {value:g}" if isinstance(value, float)
                  else f"{prefix}_{name} {value}"]
    return "\n".join(lines) + "\n"


class DirectorySupportStore:
    """Support sets as files in one directory (e.g. under /dev/shm), shared by processes.

    Triton's Python backend runs every model instance in its own process, so the
    registering model and the segmenting model share their supports through files:
    ``<key>.npz`` holding ``feat`` and ``mask``. Bounds as SupportStore's: after each
    put the least recently used files (by modification time, refreshed on every get) go
    until at most ``max_entries`` files and ``max_bytes`` bytes remain.
    """

    def __init__(self, root: str | os.PathLike[str], max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError(f"max_entries and max_bytes must be at least 1, got "
                             f"{max_entries} and {max_bytes}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)

    def _path(self, key: str) -> Path:
        if not key or not all(char in "0123456789abcdef" for char in key):
            raise UnknownSupportError(f"unknown support_id {key!r}: not an id this server "
                                      "gives; register the support again with crnet_support")
        return self.root / f"{key}.npz"

    def put(self, key: str, feat: np.ndarray, mask: np.ndarray) -> None:
        """Write the support atomically, then trim to the bounds."""
        buffer = io.BytesIO()
        np.savez(buffer, feat=feat, mask=mask)
        if buffer.tell() > self.max_bytes:
            raise InputError(f"this support set needs {buffer.tell() / 2**20:.1f} MiB, more "
                             f"than the whole support store ({self.max_bytes / 2**20:.1f} MiB)")
        write_bytes_atomic(self._path(key), buffer.getvalue())
        self.trim()

    def get(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(feat, mask) of ``key``, marked as recently used; UnknownSupportError if absent."""
        path = self._path(key)
        try:
            with np.load(path) as data:
                feat, mask = data["feat"], data["mask"]
            os.utime(path)
        except FileNotFoundError:
            raise UnknownSupportError(
                f"unknown support_id {key!r}: this server does not hold it (never registered, "
                "evicted to keep the support store within its bounds, or the store was "
                "cleared); register the support again with crnet_support") from None
        return feat, mask

    def stats(self) -> tuple[int, int]:
        """(entries, bytes) held now."""
        sizes = [path.stat().st_size for path in self.root.glob("*.npz")]
        return len(sizes), sum(sizes)

    def trim(self) -> None:
        """Delete least recently used files beyond the bounds."""
        entries = []
        for path in self.root.glob("*.npz"):
            with contextlib.suppress(FileNotFoundError):
                status = path.stat()
                entries.append((status.st_mtime_ns, status.st_size, path))
        entries.sort()
        total = sum(size for _, size, _ in entries)
        while entries and (len(entries) > self.max_entries or total > self.max_bytes):
            _, size, path = entries.pop(0)
            path.unlink(missing_ok=True)
            total -= size
