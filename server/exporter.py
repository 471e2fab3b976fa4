"""Tier 2's exporter: a child process that traces levels to ONNX, away from the serving GIL."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

import torch

from models import Level, SubspaceNet
from models.export import to_onnx

if TYPE_CHECKING:
    from server.int8 import Calibration, Gate


class ExporterDied(Exception):
    """The child process is gone (killed, out of memory); the next export starts a new one."""


def _serve(conn: Connection) -> None:
    """The child: answer ("export", key, net | None, level, example) with ONNX bytes and
    ("int8", key, net | None, level, fp32 bytes, calibration, format) with the int8 bytes and
    their Gate (or the exception), drop a network on ("forget", key), until EOF. A network is
    sent once per key and kept here, so one child serves every model of the daemon."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the parent's to handle
    os.nice(10)  # the whole process yields the cores to serving
    torch.set_num_threads(1)
    nets: dict[int, SubspaceNet] = {}
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the parent closed the pipe or died
            return
        if msg[0] == "forget":
            nets.pop(msg[1], None)
            continue
        kind, key, net, level, *args = msg
        if net is not None:
            nets[key] = net
        try:
            if kind == "int8":
                from server.int8 import quantize_and_check  # onnxruntime: only when asked

                conn.send(quantize_and_check(nets[key], level, *args))
            else:
                conn.send(to_onnx(nets[key], level, *args))
        except Exception as e:
            conn.send(e)


class Exporter:
    """Runs `to_onnx` in one long-lived child process shared by every model, started on first use.

    TorchScript tracing holds the GIL for most of its length. On a thread of the serving
    process at low priority, a starved tracer holding the GIL stalled requests behind it; in a
    process of its own, at nice 10, it only takes what the cores have spare. Callers queue on
    a lock: the child exports one level at a time.

    The child holds torch, the exporter and a copy of the network (measured: 350 MB resident
    for the digit CNN, 560 MB for ResNet18), so it exits after `idle_s` without work and the
    next export starts a new one (about 2 s more). It is started with spawn, so a script
    that enables tier 2 needs the `if __name__ == "__main__":` guard, as for any spawn child.
    """

    def __init__(self, idle_s: float | None = None) -> None:
        self.idle_s = idle_s
        self._keys: dict[int, int] = {}  # id(net) → key, for the networks served
        self._next_key = itertools.count(1)
        self._sent: set[int] = set()  # keys the running child holds
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._closed = False

    def start(self) -> None:
        """Start the child now (it imports torch: about a second) rather than on first export."""
        with self._lock:
            self._ensure()
            self._arm_idle()

    def __call__(
        self, net: SubspaceNet, level: Level, x: torch.Tensor
    ) -> tuple[bytes, torch.Tensor]:
        """ONNX bytes of `level` from the child, and tier 1's logits on `x` from `net` here."""
        with torch.inference_mode():
            reference = net(x, level)
        out = self._ask("export", net, level, x)
        assert isinstance(out, bytes)
        return out, reference

    def int8(
        self, net: SubspaceNet, level: Level, model: bytes, calibration: Calibration, fmt: str
    ) -> tuple[bytes, Gate]:
        """`level`'s fp32 ONNX `model` quantized to int8 in the child (static, calibrated on
        `calibration`), with its agreement with tier 1 there: seconds of CPU, none of it here."""
        out = self._ask("int8", net, level, model, calibration, fmt)
        assert isinstance(out, tuple)
        return out

    def _ask(self, kind: str, net: SubspaceNet, level: Level, *args: object) -> object:
        with self._lock:
            conn = self._ensure()
            key = self._keys.get(id(net)) or self._keys.setdefault(id(net), next(self._next_key))
            try:
                sent = None if key in self._sent else net
                conn.send((kind, key, sent, level.detached(), *args))
                self._sent.add(key)
                out = conn.recv()
            except (EOFError, OSError) as e:
                self._reset()
                raise ExporterDied(f"export process ended: {e}") from e
            self._arm_idle()
        if isinstance(out, Exception):
            raise out
        return out

    def _ensure(self) -> Connection:
        if self._closed:
            raise ExporterDied("the exporter is closed")
        if self._proc is not None and not self._proc.is_alive():
            self._reset()
        if self._conn is None:
            # spawn, not fork: a forked copy of a process running torch and ORT thread pools
            # may inherit a held lock; spawn starts clean.
            ctx = multiprocessing.get_context("spawn")
            parent, child = ctx.Pipe()
            self._proc = ctx.Process(
                target=_serve, args=(child,), name="lcs-tier2-export", daemon=True
            )
            self._proc.start()
            child.close()
            self._conn = parent
            if self._closed:  # close() ran while the child was starting
                self._reset()
                raise ExporterDied("the exporter is closed")
        return self._conn

    def _arm_idle(self) -> None:
        """(Re)start the countdown to stopping the child; called holding the lock."""
        if self._timer is not None:
            self._timer.cancel()
        if self.idle_s is not None:
            self._timer = threading.Timer(self.idle_s, self._stop_idle)
            self._timer.daemon = True
            self._timer.start()

    def _stop_idle(self) -> None:
        """Stop the child unless an export holds the lock (that export re-arms the timer, or
        resets on EOF after close())."""
        if self._lock.acquire(blocking=False):
            try:
                self._reset()
            finally:
                self._lock.release()

    def _reset(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None and self._proc.pid is not None:  # pid: started
            self._proc.kill()
            self._proc.join(timeout=5)
        self._proc, self._conn = None, None
        self._sent.clear()

    def forget(self, net: SubspaceNet) -> None:
        """A model was unloaded or replaced: the child drops its copy of `net`."""
        with self._lock:
            key = self._keys.pop(id(net), None)
            if key in self._sent and self._conn is not None:
                self._sent.discard(key)
                try:
                    self._conn.send(("forget", key))
                except OSError:
                    self._reset()

    def close(self) -> None:
        """Kill the child; an export in progress is abandoned (its caller sees ExporterDied)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        proc = self._proc
        if proc is not None and proc.pid is not None:  # ends an export in progress (EOF)
            proc.kill()
            proc.join(timeout=5)
        self._stop_idle()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid
