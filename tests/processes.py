"""Helpers for tests that start real servers: a free loopback port, and stopping process
groups (each server is started with ``start_new_session=True``, so its children go with it)."""

import os
import signal
import socket
import subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(procs: list[subprocess.Popen], timeout: float = 30) -> None:
    """SIGTERM each process group, newest first; SIGKILL those still there after ``timeout``."""
    for proc in reversed(procs):
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
