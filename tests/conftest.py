"""Shared fixtures: an isolated cache per test, and a Hub-compatible server with the fixture repos.

Fixture repos mirror the real Hub layouts (see tests/fixtures/README.md):
source trees at the root of a branch (the older layout), noarch payloads
``build/torch-<backend>`` on a ``v1`` branch, a legacy ``build/torch-universal``
in a model-type repo, binary-only variants with and without ``source``
provenance, a CUTLASS kernel and broken ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "kernels"
#: A fixture kernel's own tests/ run against its build (`jitkernels test`, tests/test_kernel_tests.py), not here.
collect_ignore_glob = ["fixtures/*"]
EXAMPLES = ROOT / "jitkernels" / "examples" / "kernels"
sys.path.insert(0, str(ROOT / "tests"))
# Triton picks interpreter or compiler when it is first imported (tl.sum and the other library
# functions are decorated then), so a test that imports Triton before another sets TRITON_INTERPRET
# would break that one. Without a GPU every Triton kernel in this suite runs on the interpreter.
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")


def tree(folder: Path, prefix: str = "") -> dict[str, bytes]:
    """Every file under ``folder`` as ``{prefix + relpath: bytes}``."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            out[prefix + str(path.relative_to(folder)).replace(os.sep, "/")] = path.read_bytes()
    return out


def metadata(name: str, variant_id: str, backend: str, **extra) -> bytes:
    data = {
        "name": name,
        "id": variant_id,
        "version": 1,
        "license": "Apache-2.0",
        "python-depends": [],
        "kernel-depends": [],
        "backend": {"type": backend},
        **extra,
    }
    return json.dumps(data, indent=2).encode()


def noarch_payload(source: Path, python_name: str, name: str, backend: str) -> dict[str, bytes]:
    """What kernel-builder publishes for a Python-only kernel: build/torch-<backend>/ is the package."""
    variant = f"build/torch-{backend}/"
    files = tree(source / "torch-ext" / python_name, variant)
    ops_name = f"_{python_name}_{backend}_a1b2c3d"
    files[variant + "_ops.py"] = (
        f"import torch\nops = getattr(torch.ops, {ops_name!r})\n\n"
        f"def add_op_namespace_prefix(op_name: str) -> str:\n    return f\"{ops_name}::{{op_name}}\"\n"
    ).encode()
    files[variant + "metadata.json"] = metadata(name, ops_name, backend)
    return files


def binary_variant(python_name: str, name: str, variant: str, backend: str, **meta) -> dict[str, bytes]:
    """A compiled build variant: package, _ops.py, a (fake) library and metadata.json."""
    prefix = f"build/{variant}/"
    ops_name = f"_{python_name}_{backend}_0a1b2c3"
    return {
        prefix + "__init__.py": b"from ._ops import ops\n",
        prefix + "_ops.py": f"import torch\nfrom . import {ops_name}\nops = torch.ops.{ops_name}\n".encode(),
        prefix + f"{ops_name}.abi3.so": b"\x7fELF not a real library: JitKernels must never download or load it",
        prefix + "metadata.json": metadata(name, ops_name, backend, **meta),
    }


def make_git_monorepo(where: Path, links: dict[str, str] | None = None) -> tuple[str, str]:
    """A bare git repo laid out like kernels-community (one folder per kernel); returns (url, commit).

    ``links``: symbolic links to commit too (``{path: target}``), as git stores them.
    """
    work = where / "monorepo-work"
    shutil.copytree(EXAMPLES / "scaled-add", work / "scaled-add")
    (work / "README.md").write_text("kernels monorepo fixture\n")
    for path, target in (links or {}).items():
        (work / path).symlink_to(target)
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@e", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@e")
    run = lambda *a, cwd=work: subprocess.run(["git", *a], cwd=cwd, check=True, capture_output=True, env=env)  # noqa: E731
    run("init", "-q", ".")
    run("add", ".")
    run("commit", "-qm", "kernels")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True, check=True).stdout.strip()
    bare = where / "kernels-monorepo.git"
    run("clone", "-q", "--bare", str(work), str(bare), cwd=where)
    run("config", "uploadpack.allowAnySHA1InWant", "true", cwd=bare)
    return f"file://{bare}", commit


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """A Hub-compatible server on 127.0.0.1 serving every fixture repo (started once per session)."""
    from jitkernels.testing.hubserver import FakeHub

    tmp = tmp_path_factory.mktemp("hubdata")
    server = FakeHub()
    tln = FIXTURES / "triton-layer-norm"
    server.add_repo(
        "kernels-community/triton-layer-norm",
        {
            "main": {"README.md": b"# triton-layer-norm\n", **tree(tln)},
            "v1": {
                "README.md": b"# triton-layer-norm\n",
                **noarch_payload(tln, "triton_layer_norm", "triton-layer-norm", "cpu"),
                **noarch_payload(tln, "triton_layer_norm", "triton-layer-norm", "cuda"),
            },
        },
    )
    server.add_repo("jitkernels-examples/scaled-add", {"main": tree(EXAMPLES / "scaled-add")})
    server.add_repo("jitkernels-examples/rms-norm", {"main": tree(EXAMPLES / "rms-norm")})
    rms_pkg = tree(EXAMPLES / "rms-norm" / "torch-ext" / "rms_norm", "build/torch-universal/rms_norm/")
    server.add_repo("kernels-test/rms-norm-universal", {"main": {"README.md": b"legacy\n", **rms_pkg}},
                    repo_type="model")
    server.add_repo(
        "kernels-test/binary-only",
        {"v1": {
            **binary_variant("binary_only", "binary-only", "torch213-cxx11-cpu-x86_64-linux", "cpu"),
            **binary_variant("binary_only", "binary-only", "torch211-cxx11-cu130-x86_64-linux", "cuda"),
        }},
    )
    url, commit = make_git_monorepo(tmp)
    server.add_repo(
        "kernels-test/binary-with-source",
        {"v1": binary_variant(
            "scaled_add", "scaled-add", "torch-stable-abi210-cpu-x86_64-linux", "cpu",
            source=url, provenance={"kernel": {"commit": commit, "dirty": False}},
        )},
    )
    for name in ("cutlass-gemm", "bad-toml", "missing-src"):
        server.add_repo(f"kernels-test/{name}", {"main": tree(FIXTURES / name)})
    # transformers asks for version 1 of an attn_implementation="<org>/<name>" kernel
    server.add_repo("kernels-test/attn-interface", {"main": tree(FIXTURES / "attn-interface"),
                                                    "v1": tree(FIXTURES / "attn-interface")})
    server.add_repo("some-user/rms-norm", {"main": tree(EXAMPLES / "rms-norm")})
    for org in ("kernels-community", "jitkernels-examples", "kernels-test"):
        server.set_org(org, trusted=True)
    server.set_org("some-user", trusted=False)
    server.git_url, server.git_commit = url, commit
    with server:
        yield server


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test gets its own JitKernels cache and Hugging Face cache, online, no LOCAL_KERNELS."""
    cache = tmp_path / "jkcache"
    hf_home = tmp_path / "hf"
    monkeypatch.setenv("JITKERNELS_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("JITKERNELS_TIMEOUT", "3")
    for var in ("LOCAL_KERNELS", "HF_HUB_OFFLINE", "JITKERNELS_DISABLE_BUILD", "TORCH_CUDA_ARCH_LIST", "KERNELS_CACHE",
                "HF_KERNELS_CACHE", "JITKERNELS_FALLBACK"):
        monkeypatch.delenv(var, raising=False)
    if "huggingface_hub" in sys.modules:
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return tmp_path


@pytest.fixture
def online(hub, monkeypatch):
    """Point huggingface_hub (already imported or not) at the fixture Hub."""
    from huggingface_hub import constants

    from jitkernels.testing.hubserver import patch_hub_client

    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", os.environ["HF_HUB_CACHE"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub.clear_log()
    hub.down = False
    with patch_hub_client(hub.endpoint):
        yield hub
    hub.down = False


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1, as huggingface_hub and JitKernels read it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


#: A kernel the test Hub serves in the older layout (a build/torch-universal payload, model-type repo).
RMS = "kernels-test/rms-norm-universal"
#: A kernel of a publisher nobody trusts by default.
UNTRUSTED = "some-user/rms-norm"


def entry_dirs(prefix: str = "") -> list[Path]:
    """The published cache entries whose name starts with ``prefix``."""
    folder = Path(os.environ["JITKERNELS_CACHE"]) / "entries"
    return sorted(folder.glob(prefix + "*")) if folder.is_dir() else []


def go_offline(monkeypatch) -> None:
    """``HF_HUB_OFFLINE=1`` for this process, huggingface_hub's already-read constant included."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def wait_for(predicate, timeout: float = 120.0) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def child_env(**extra) -> dict:
    """Environment for a subprocess that sees this test's caches and the repo on sys.path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_python(code: str, *args: str, timeout: float = 300, cwd=None, **env) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) in a fresh Python that sees this test's caches: the one way tests start a child.

    ``env``: variables added to (or replacing) this process's environment.
    """
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=child_env(**env))


def start_python(code: str, *args: str, **env) -> subprocess.Popen:
    """:func:`run_python`, but running on: its stdout and stderr are pipes of text."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env(**env))


def load_in_child(commit: str, **env) -> subprocess.CompletedProcess:
    """Load :data:`RMS` at ``commit`` in a fresh process and check it against PyTorch (prints OK)."""
    return run_python(f"""
        import jitkernels, torch
        k = jitkernels.load('hf', {RMS!r}, revision={commit!r}, backend='cpu')
        x = torch.randn(2, 8)
        assert torch.allclose(k.rms_norm(x, torch.ones(8)), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
        print('OK')
    """, timeout=120, **env)
