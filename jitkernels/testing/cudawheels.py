"""CUDA compiler wheels laid out as NVIDIA's, and package indexes serving them (tests, the GPU runner).

The wheels have the real layout (``nvidia/cu13/bin/nvcc``, ``nvidia/cu13/nvvm/bin/cicc``,
``nvidia/cu13/include/crt/host_config.h``..., a ``.dist-info`` with the
real ``Requires-Dist`` markers for the ``cuda-toolkit`` metapackage) but
their programs are shell scripts: ``nvcc --version`` answers like the real
one, nothing compiles. :func:`index_pages` makes the Simple API pages (PEP 691
JSON or PEP 503 HTML, with sha256) for a server; :func:`write_index` lays out
a ``file://`` index folder as pip reads one, from any wheel files (the GPU
runner carries NVIDIA's real wheels that way).
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import re
import shutil
import zipfile
from pathlib import Path

#: (wheel file, project, version) of the CUDA 13.0.3 release as PyPI has it, and the components it pins.
RELEASE_13_0_3 = {
    "nvidia-cuda-nvcc": "13.0.88",
    "nvidia-nvvm": "13.0.88",
    "nvidia-cuda-crt": "13.0.88",
    "nvidia-cuda-runtime": "13.0.96",
    "nvidia-cuda-cccl": "13.0.85",
}
TAG = "py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64"
_MARKER = ("(sys_platform == 'linux' and platform_machine == 'aarch64' or sys_platform == 'linux' and "
           "platform_machine == 'x86_64' or sys_platform == 'win32' and platform_machine == 'AMD64')")


def _script(text: str) -> bytes:
    return ("#!/bin/sh\n" + text + "\n").encode()


def nvcc_script(nvcc_version: str) -> bytes:
    release = ".".join(nvcc_version.split(".")[:2])
    return _script(f'echo "nvcc: NVIDIA (R) Cuda compiler driver"\n'
                   f'echo "Cuda compilation tools, release {release}, V{nvcc_version}"')


def _contents(project: str, version: str) -> dict[str, tuple[bytes, bool]]:
    """``{path: (data, executable)}`` of one component wheel, as NVIDIA lays it out (fake programs)."""
    base = "nvidia/cu13/"
    tool = _script('echo "fake CUDA tool $0" >&2; exit 1')
    if project == "nvidia-cuda-nvcc":
        return {base + "bin/nvcc": (nvcc_script(version), True), base + "bin/ptxas": (tool, True),
                base + "bin/fatbinary": (tool, True), base + "bin/cudafe++": (tool, True),
                base + "bin/nvlink": (tool, True), base + "bin/bin2c": (tool, True),
                base + "bin/nvcc.profile": (b"TOP = $(_HERE_)/..\n", False),
                base + "include/fatbinary_section.h": (b"#pragma once\n", False)}
    if project == "nvidia-nvvm":
        return {base + "nvvm/bin/cicc": (tool, True), base + "nvvm/libdevice/libdevice.10.bc": (b"BC\xc0\xde", False),
                base + "lib/libnvvm.so.4": (b"\x7fELF never unpacked", False),
                base + "include/nvvm.h": (b"#pragma once\n", False)}
    if project == "nvidia-cuda-crt":
        return {base + "include/crt/host_config.h": (b"#pragma once\n", False),
                base + "include/crt/host_defines.h": (b"#pragma once\n", False)}
    if project == "nvidia-cuda-runtime":
        return {base + "include/cuda_runtime.h": (b"#pragma once\n", False),
                base + "include/cuda_runtime_api.h": (b"#pragma once\n", False),
                base + "lib/libcudart.so.13": (b"\x7fELF fake cudart", False)}
    if project == "nvidia-cuda-cccl":
        return {base + "include/cccl/cub/cub.cuh": (b"#pragma once\n", False),
                base + "include/nv/target": (b"#pragma once\n", False),
                base + "lib/cmake/cub/cub-config.cmake": (b"# never unpacked\n", False)}
    raise KeyError(project)


def wheel_name(project: str, version: str, tag: str = TAG) -> str:
    return f"{project.replace('-', '_')}-{version}-{tag}.whl"


def make_wheel(project: str, version: str, files: dict[str, tuple[bytes, bool]], requires: list[str] = (),
               extras: tuple[str, ...] = ()) -> bytes:
    """A wheel (zip) holding ``files`` with their modes and a ``.dist-info`` (METADATA, WHEEL, RECORD)."""
    dist = f"{project.replace('-', '_')}-{version}.dist-info"
    meta = ["Metadata-Version: 2.4", f"Name: {project}", f"Version: {version}"]
    meta += [f"Provides-Extra: {e}" for e in extras] + [f"Requires-Dist: {r}" for r in requires]
    members = dict(files)
    members[f"{dist}/METADATA"] = ("\n".join(meta) + "\n\n").encode(), False
    members[f"{dist}/WHEEL"] = b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\n", False
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, (data, executable) in sorted(members.items()):
            info = zipfile.ZipInfo(name, date_time=(2025, 9, 2, 17, 44, 0))
            info.external_attr = (0o100755 if executable else 0o100644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
        record = zipfile.ZipInfo(f"{dist}/RECORD", date_time=(2025, 9, 2, 17, 44, 0))
        record.external_attr = 0o100664 << 16
        zf.writestr(record, "")
    return buffer.getvalue()


def compiler_wheels(components: dict[str, str] = RELEASE_13_0_3, release: str = "13.0.3.0",
                    metapackage: bool = True, nvcc_extra_pins_its_dependencies: bool = True) -> dict[str, bytes]:
    """``{wheel file name: bytes}``: the component wheels and (``metapackage``) ``cuda-toolkit`` pinning them.

    As NVIDIA's metapackage, each component has its own extra (``nvcc``, ``nvvm``, ``crt``, ``cudart``,
    ``cccl``); from 13.0.3 on the ``nvcc`` extra also pins what ``nvcc`` needs (nvvm, crt, the runtime),
    in 13.0.2 (what torch 2.11's cu130 wheel requires) it pins nvcc alone
    (``nvcc_extra_pins_its_dependencies=False``), and the nvcc wheel requires the others unpinned.
    """
    wheels = {wheel_name(p, v): make_wheel(p, v, _contents(p, v)) for p, v in components.items()}
    if metapackage:
        extra_of = {"nvidia-cuda-nvcc": "nvcc", "nvidia-nvvm": "nvvm", "nvidia-cuda-crt": "crt",
                    "nvidia-cuda-runtime": "cudart", "nvidia-cuda-cccl": "cccl"}
        requires = [f"{p}=={v}.*; {_MARKER} and extra == '{extra_of[p]}'" for p, v in components.items()]
        if nvcc_extra_pins_its_dependencies:
            requires += [f"{p}=={v}.*; {_MARKER} and extra == 'nvcc'" for p, v in components.items()
                         if p not in ("nvidia-cuda-nvcc", "nvidia-cuda-cccl")]
        requires.append(f"nvidia-cublas==13.1.1.3.*; {_MARKER} and extra == 'cublas'")  # not a compiler part
        wheels[f"cuda_toolkit-{release}-py2.py3-none-any.whl"] = make_wheel(
            "cuda-toolkit", release, {}, requires, extras=("all", "cublas", *sorted(set(extra_of.values()))))
    return wheels


def project_of(filename: str) -> str:
    return re.sub(r"[-_.]+", "-", filename.split("-")[0]).lower()


def index_pages(wheels: dict[str, bytes], style: str = "json", prefix: str = "/simple",
                files: str = "/files", sha256: dict[str, str] | None = None) -> dict[str, bytes]:
    """``{url path: body}`` of a Simple API index of ``wheels`` (and the wheels themselves under ``files``).

    ``sha256`` overrides the published hash of some files (a mirror serving something else).
    """
    by_project: dict[str, list[str]] = {}
    for name in wheels:
        by_project.setdefault(project_of(name), []).append(name)
    pages = {f"{files}/{name}": data for name, data in wheels.items()}
    for project, names in by_project.items():
        digests = {n: (sha256 or {}).get(n) or hashlib.sha256(wheels[n]).hexdigest() for n in names}
        if style == "json":
            body = json.dumps({"meta": {"api-version": "1.1"}, "name": project, "files": [
                {"filename": n, "url": f"{files}/{n}", "hashes": {"sha256": digests[n]}, "size": len(wheels[n])}
                for n in sorted(names)]}).encode()
        else:
            links = "".join(f'<a href="../..{files}/{html.escape(n)}#sha256={digests[n]}">{html.escape(n)}</a><br>\n'
                            for n in sorted(names))
            body = f"<!DOCTYPE html><html><body>\n{links}</body></html>\n".encode()
        pages[f"{prefix}/{project}/"] = body
    return pages


def write_index(folder: Path, wheels: list[Path]) -> str:
    """Lay out ``folder`` as a ``file://`` package index of ``wheels`` (PEP 503 pages with sha256); its URL."""
    simple, files = folder / "simple", folder / "files"
    files.mkdir(parents=True, exist_ok=True)
    by_project: dict[str, list[Path]] = {}
    for wheel in wheels:
        target = files / wheel.name
        if not target.exists():
            shutil.copyfile(wheel, target)
        by_project.setdefault(project_of(wheel.name), []).append(target)
    for project, paths in by_project.items():
        page = simple / project
        page.mkdir(parents=True, exist_ok=True)
        links = []
        for path in sorted(paths):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            links.append(f'<a href="../../files/{html.escape(path.name)}#sha256={digest}">{html.escape(path.name)}</a>')
        (page / "index.html").write_text("<!DOCTYPE html><html><body>\n" + "<br>\n".join(links) + "\n</body></html>\n")
    return simple.resolve().as_uri()


def fake_toolkit(home: Path, nvcc_version: str = "13.0.88") -> Path:
    """A local CUDA toolkit's layout (``bin/nvcc`` answering ``nvcc_version``); nothing in it compiles."""
    for name, (data, executable) in {**_contents("nvidia-cuda-nvcc", nvcc_version),
                                     **_contents("nvidia-nvvm", nvcc_version),
                                     **_contents("nvidia-cuda-crt", nvcc_version),
                                     **_contents("nvidia-cuda-runtime", nvcc_version),
                                     **_contents("nvidia-cuda-cccl", nvcc_version)}.items():
        path = home / name[len("nvidia/cu13/"):]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755 if executable else 0o644)
    return home
