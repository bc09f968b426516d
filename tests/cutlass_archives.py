"""Small CUTLASS-shaped header trees and release archives for the build-input tests, and servers for them
(one that serves files, one that trickles bytes as a slow mirror does).

The trees have the real layout (``include/cutlass/``, ``include/cute/``,
``tools/util/include/cutlass/util/``); archives are laid out as NVIDIA's
GitHub tag archives (one top folder ``cutlass-<version>/`` holding the whole
repository, of which JitKernels unpacks two folders).
"""

from __future__ import annotations

import http.server
import io
import os
import tarfile
import threading
from pathlib import Path

from jitkernels.inputs import gittree

HEADERS = {
    "include/cutlass/cutlass.h": "#pragma once\n#include \"cutlass/version.h\"\nnamespace cutlass { constexpr int kFixture = 1; }\n",
    "include/cutlass/version.h": "#pragma once\n#define CUTLASS_MAJOR 3\n#define CUTLASS_MINOR 8\n#define CUTLASS_PATCH 0\n",
    "include/cutlass/gemm/gemm.h": "#pragma once\n#include \"cutlass/cutlass.h\"\n",
    "include/cute/tensor.hpp": "#pragma once\n",
    "tools/util/include/cutlass/util/host_tensor.h": "#pragma once\n",
}


def write_tree(root: Path, marker: str = "") -> Path:
    """A CUTLASS-layout header tree (``marker`` changes one header, hence the git tree ids)."""
    for rel, text in HEADERS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + marker)
    return root


def trees_of(root: Path) -> tuple[str, str]:
    return gittree.tree_id(root / "include"), gittree.tree_id(root / "tools/util/include")


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def release_archive(tree: Path, version: str = "3.8.0", extra=()) -> bytes:
    """A .tar.gz laid out like github.com/NVIDIA/cutlass/archive/refs/tags/v<version>.tar.gz.

    ``extra``: ``(name, data, attrs)`` members added as they are (hostile ones included).
    """
    top = f"cutlass-{version}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        _add(tar, top, type=tarfile.DIRTYPE, mode=0o755)
        _add(tar, f"{top}/README.md", b"# CUTLASS\n")
        _add(tar, f"{top}/examples/00_basic_gemm/basic_gemm.cu", b"int main() {}\n")
        for path in sorted(tree.rglob("*")):
            rel = path.relative_to(tree).as_posix()
            if path.is_symlink():
                _add(tar, f"{top}/{rel}", type=tarfile.SYMTYPE, linkname=os.readlink(path), mode=0o777)
            elif path.is_dir():
                _add(tar, f"{top}/{rel}", type=tarfile.DIRTYPE, mode=0o755)
            else:
                _add(tar, f"{top}/{rel}", path.read_bytes(), mode=0o755 if os.access(path, os.X_OK) else 0o644)
        for name, data, attrs in extra:
            _add(tar, name, data, **attrs)
    return buffer.getvalue()


class ArchiveServer:
    """Serves ``files`` (``{"/path": bytes}``) on 127.0.0.1; ``requests`` lists the paths asked."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.requests.append(self.path)
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class TrickleServer:
    """Announces a 1 MB archive on 127.0.0.1 and sends one byte every 50 ms for at most 20 s (a slow mirror)."""

    def __init__(self):
        import http.server
        import threading
        import time

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", str(1 << 20))
                self.end_headers()
                end = time.monotonic() + 20
                try:
                    while time.monotonic() < end:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.05)  # the pace of the slow mirror, not a synchronisation
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
