"""Keeps the views a user is looking at current, off the request path.

TensorBoard's data provider reads a series whole (``read_scalars`` and
``read_tensors`` take no step range), so after a live run grows, the first
request of a view of a 100,000-step run pays a read of every step of what it
shows however few steps were added: 0.1-0.4 s measured on the Rust data server
(TensorBoard 2.21, 2-core machine), more for the diagnosis. A user watching
training should not wait for that at every reload. :class:`ViewRefresher`
remembers the views requested in the last :data:`WATCH_S` seconds and, every
:data:`INTERVAL_S`, on one daemon thread, recomputes each through the plugin's
versioned cache: a view whose series did not grow costs a listing (shared by
the views of a run until the next pass) and a cache hit; one whose series grew is
read and computed here, so the user's next request finds it (or waits for the
computation under way, :meth:`tb_gradplugin.cached_reader.LRUCache.memo`,
instead of starting another). Imports no TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["INTERVAL_S", "MAX_WATCHED", "WATCH_S", "ViewRefresher"]

INTERVAL_S = 2.0
"""Seconds between two passes over the watched views. TensorBoard reloads a
log directory every 5 s by default (``--reload_interval``); a pass over
unchanged views costs one listing per run and kind (13-110 ms on the Rust data
server), which the requests between two passes then reuse."""

WATCH_S = 300.0
"""Seconds a view stays watched after its last request (TensorBoard's
auto-reload asks again every 30 s while the tab is open)."""

MAX_WATCHED = 32
"""Most views kept current at once, the most recently requested ones."""

_LOG = logging.getLogger(__name__)


class ViewRefresher:
    """Recomputes the recently requested views, on one daemon thread.

    The thread starts with the first :meth:`watch` and waits (no listing, no
    read) while nothing is watched; its first pass comes ``interval_s`` after
    a request. A pass takes at most half of the thread's time: after a pass of
    ``t`` seconds it sleeps ``max(interval_s, t)``. It runs at the requests'
    priority, as a request often waits for its work (niced, it was starved on
    a busy machine and such a request waited seconds).

    Args:
        interval_s: Seconds between passes. Defaults to :data:`INTERVAL_S`.
        watch_s: Seconds a view stays watched. Defaults to :data:`WATCH_S`.
        max_watched: Most views watched. Defaults to :data:`MAX_WATCHED`.
        around_pass: Returns a context manager that a whole pass runs in (the
            plugin's: list every run afresh once per pass). Defaults to
            ``None``: none.

    Example:
        >>> seen = []
        >>> refresher = ViewRefresher(interval_s=60.0)
        >>> refresher.watch(("flags", "run_a"), lambda: seen.append("run_a"))
        >>> refresher.run_once()
        >>> seen
        ['run_a']
    """

    def __init__(
        self,
        interval_s: float = INTERVAL_S,
        watch_s: float = WATCH_S,
        max_watched: int = MAX_WATCHED,
        around_pass: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ):
        self._around_pass = around_pass or contextlib.nullcontext
        self._interval_s = float(interval_s)
        self._watch_s = float(watch_s)
        self._max_watched = int(max_watched)
        self._watched: dict[Hashable, tuple[float, Callable[[], Any]]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, key: Hashable, recompute: Callable[[], Any]) -> None:
        """Marks a view as requested now.

        Args:
            key: The view and its parameters (e.g. route, experiment, run).
            recompute: Brings the view's cached payload up to date; called
                on the refresher's thread. Its exceptions (a run removed
                meanwhile, a provider error) are logged at debug level and
                the view stays watched until it expires.
        """
        with self._lock:
            self._watched.pop(key, None)
            self._watched[key] = (time.monotonic(), recompute)
            while len(self._watched) > self._max_watched:
                self._watched.pop(next(iter(self._watched)))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="gradient-health-refresh", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def watched(self) -> list[Hashable]:
        """The keys of the views watched now, the most recently requested last."""
        now = time.monotonic()
        with self._lock:
            for key, (seen, _) in list(self._watched.items()):
                if now - seen > self._watch_s:
                    del self._watched[key]
            return list(self._watched)

    def run_once(self) -> None:
        """One pass: recomputes every watched view, the most recent first."""
        with self._around_pass():
            for key in reversed(self.watched()):
                with self._lock:
                    entry = self._watched.get(key)
                if entry is None:
                    continue
                try:
                    entry[1]()
                except Exception:
                    _LOG.debug("refreshing %r failed", key, exc_info=True)

    def _loop(self) -> None:
        pause = self._interval_s  # the request that watched just computed it
        while True:
            self._wake.clear()  # before the check: a watch() after it wakes the wait
            if not self.watched():
                self._wake.wait()
                continue
            time.sleep(pause)
            start = time.monotonic()
            self.run_once()
            pause = max(self._interval_s, time.monotonic() - start)
