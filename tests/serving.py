"""Start `danlu serve` as a real subprocess on 127.0.0.1 with a free port, for the server tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, process: subprocess.Popen, port: int, log: Path):
        self.process, self.port, self.log = process, port, log
        self.url = f"http://127.0.0.1:{port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def running_server(model, *flags, log_dir: Path, timeout: float = 120.0, command: list[str] | None = None,
                   env: dict[str, str] | None = None):
    """Yield a started server; stop it (SIGTERM, then SIGKILL) when the block ends. `command` replaces
    `python -m danlu` (e.g. a script that patches danlu first); `env` adds environment variables."""
    port = free_port()
    log = Path(log_dir) / f"serve-{port}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    with open(log, "w") as out:
        danlu = command or [sys.executable, "-m", "danlu"]
        process = subprocess.Popen([*danlu, "serve", str(model), "--port", str(port),
                                    *map(str, flags)], stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(process, port, log)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.output()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start in {timeout} s:\n{server.output()[-3000:]}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text format (0.0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0
