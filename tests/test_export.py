"""`jitkernels export`: a built entry in upstream's build/<variant>/ layout that plain `kernels` 0.17.2 loads.

The loading side always runs in a fresh interpreter that never imports JitKernels
(checked through sys.modules), with upstream's own `get_local_kernel`.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jitkernels import machine
from jitkernels.cli.main import main
from jitkernels.upstream.export import variant_name

from conftest import EXAMPLES

kernels = pytest.importorskip("kernels")

UPSTREAM_LOAD = """
import json, sys
from pathlib import Path
import torch
from kernels import get_local_kernel
from kernels._rust import Digest, Metadata

repo = Path(sys.argv[1])
k = get_local_kernel(repo, backend="cpu")
variant = next(p for p in (repo / "build").iterdir() if p.is_dir())
meta = Metadata.read_from_file(variant / "metadata.json")
meta.digest.validate(Digest.hash_variant(meta.digest.algorithm, variant))  # raises on any difference
exec(sys.argv[2])
print("JITKERNELS_MODULES", json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "jitkernels")))
"""


def upstream_run(repo, check: str) -> str:
    """Run upstream kernels in a clean interpreter (no PYTHONPATH to this checkout, no autopatch)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITKERNELS_") and k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run([sys.executable, "-c", UPSTREAM_LOAD, str(repo), check], capture_output=True, text=True,
                         env=env, cwd=str(repo), timeout=300)
    assert out.returncode == 0, out.stderr
    assert "JITKERNELS_MODULES []" in out.stdout, out.stdout
    return out.stdout


def _upstream_variants():
    """Upstream's variant parser: ``kernels.variants`` up to 0.18, ``kernels._internals.variants`` from 0.19."""
    try:
        return importlib.import_module("kernels.variants")
    except ModuleNotFoundError:
        return importlib.import_module("kernels._internals.variants")


@pytest.mark.parametrize("kwargs,expected", [
    ({"backend": "cpu", "torch_version": "2.13.0", "cpu": "x86_64", "os_name": "linux"},
     "torch213-cxx11-cpu-x86_64-linux"),
    ({"backend": "cuda", "torch_version": "2.14.1", "cuda_version": "13.0", "cpu": "x86_64", "os_name": "linux"},
     "torch214-cxx11-cu130-x86_64-linux"),
    ({"backend": "cuda", "stable_abi": "2.10", "cuda_version": "12.8", "cpu": "aarch64", "os_name": "linux"},
     "torch-stable-abi210-cu128-aarch64-linux"),
    ({"backend": "cpu", "torch_version": "2.13", "cpu": "aarch64", "os_name": "darwin"},
     "torch213-cpu-aarch64-darwin"),
    ({"backend": "cuda", "python_only": True}, "torch-cuda"),
])
def test_variant_names_parse_as_upstream_reads_them(kwargs, expected):
    parse_variant = _upstream_variants().parse_variant

    name = variant_name(**kwargs)
    assert name == expected
    assert parse_variant(name).variant_str == name


def test_local_variant_is_the_one_upstream_selects_here():
    parse_variant, resolve_variant = _upstream_variants().parse_variant, _upstream_variants().resolve_variant

    name = variant_name("cpu", torch_version=machine.torch_version(), cxx11_abi=machine.cxx11_abi())
    other = variant_name("cpu", torch_version="2.1", cxx11_abi=True)
    chosen, _trace = resolve_variant([parse_variant(other), parse_variant(name)], "cpu")
    assert chosen is not None and chosen.variant_str == name


def test_python_kernel_export_loads_with_upstream_get_local_kernel(tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", str(EXAMPLES / "rms-norm"), "--local", "--backend", "cpu", "--to", str(out)]) == 0
    folder = out / "build" / "torch-cpu"
    assert capsys.readouterr().out.strip() == str(folder)
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["name"] == "rms-norm" and meta["version"] == 1 and meta["backend"] == {"type": "cpu"}
    assert meta["id"].startswith("_rms_norm_cpu_") and "__init__.py" in meta["digest"]["files"]
    upstream_run(out, (
        "x = torch.randn(4, 8); w = torch.ones(8)\n"
        "ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w\n"
        "torch.testing.assert_close(k.rms_norm(x, w, 1e-6), ref)\n"
    ))


def test_export_of_a_folder_without_a_kernel_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), "--local", "--to", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_native_cpu_export_loads_with_upstream_and_matches_torch(tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", str(EXAMPLES / "scaled-add"), "--local", "--backend", "cpu", "--to", str(out)]) == 0
    variant = variant_name("cpu", torch_version=machine.torch_version(), cxx11_abi=machine.cxx11_abi())
    folder = out / "build" / variant
    printed = capsys.readouterr()
    assert printed.out.strip() == str(folder)
    assert "hf upload <org>/<name> " in printed.err and "--repo-type kernel" in printed.err
    meta = json.loads((folder / "metadata.json").read_text())
    library = [f for f in meta["digest"]["files"] if f.endswith(".so")]
    assert library == [meta["id"] + machine.extension_suffix()]
    upstream_run(out, (
        "x, y = torch.randn(10_000), torch.randn(10_000)\n"
        "torch.testing.assert_close(k.scaled_add(x, y, 0.25), x + 0.25 * y)\n"
        "assert k.__name__ == json.load(open(variant / 'metadata.json'))['id']\n"
        "assert hasattr(getattr(torch.ops, k.__name__), 'scaled_add')\n"
    ))

    # Exporting again replaces the variant in place; nothing else appears under build/.
    assert main(["export", str(EXAMPLES / "scaled-add"), "--local", "--backend", "cpu", "--to", str(out)]) == 0
    assert [p.name for p in (out / "build").iterdir()] == [variant]


@pytest.mark.parametrize("inside", ["entry", "package", "cache-root", "hf-cache"])
def test_export_into_a_cache_is_refused_and_the_entry_is_untouched(tmp_path, capsys, inside):
    """`export --to` a published entry copied the package into itself (172 KB error, an empty build/ left in it)."""
    from conftest import entry_dirs

    assert main(["export", str(EXAMPLES / "rms-norm"), "--local", "--backend", "cpu", "--to", str(tmp_path / "ok")]) == 0
    (entry,) = entry_dirs("_rms_norm_cpu_")
    before = sorted(str(p.relative_to(entry)) for p in entry.rglob("*"))
    target = {"entry": entry, "package": entry / "rms_norm", "cache-root": entry.parent.parent,
              "hf-cache": Path(os.environ["HF_HUB_CACHE"]) / "models--x--y"}[inside]
    capsys.readouterr()
    assert main(["export", str(EXAMPLES / "rms-norm"), "--local", "--backend", "cpu", "--to", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Refusing to export into") and len(err) < 1000, err[:2000]
    assert sorted(str(p.relative_to(entry)) for p in entry.rglob("*")) == before  # no build/ in a published entry
    assert not (target / "build").exists()
    assert main(["verify"]) == 0
