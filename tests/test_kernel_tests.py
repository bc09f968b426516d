"""A kernel importable by its own name (``alias``), and ``jitkernels test``: a kernel's own tests/ against its build.

The fixture ``attn-interface`` has flash-attn2's layout (a package whose ``flash_attn_interface``
submodule defines ``torch.library.custom_op`` ops at import). With ``JITKERNELS_KC`` set, the real
kernels-community relu (its suite calls ``kernels.get_kernel``) and rmsnorm (``from rmsnorm.layers
import ...``) run their own suites on the CPU, and an edit of relu rebuilds only what changed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import jitkernels
from jitkernels.errors import InvalidKernelNameError

from conftest import FIXTURES, child_env, run_python

ATTN = FIXTURES / "attn-interface"
KC = os.environ.get("JITKERNELS_KC")
needs_kc = pytest.mark.skipif(not KC or not Path(KC, "relu").is_dir(), reason="set JITKERNELS_KC to a kernels-community checkout")


def _copy(tmp_path, source: Path) -> Path:
    folder = tmp_path / source.name
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    return folder


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _same_file_modules(path: Path) -> list:
    """The distinct module objects executed from ``path`` (one object may be in sys.modules under two names)."""
    found = {id(m): m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == str(path)}
    return list(found.values())


# -- alias --------------------------------------------------------------------------------------------

def test_alias_maps_the_package_and_its_submodules_to_the_loaded_modules(tmp_path, monkeypatch):
    folder = _copy(tmp_path, ATTN)
    k = jitkernels.load_local(folder, backend="cpu", alias="fixture_fa2")
    monkeypatch.setattr(sys, "modules", sys.modules)  # the aliases are removed below, whatever happens
    try:
        import fixture_fa2
        import fixture_fa2.flash_attn_interface as interface
        from fixture_fa2.flash_attn_interface import _flash_attn_forward

        assert fixture_fa2 is k and interface is k.flash_attn_interface
        assert _flash_attn_forward is k.flash_attn_interface._flash_attn_forward
        assert len(_same_file_modules(Path(interface.__file__))) == 1  # executed once, whatever it is called
        import torch

        q = torch.randn(1, 3, 2, 4)
        torch.testing.assert_close(fixture_fa2.flash_attn_func(q, q, q), k.flash_attn_func(q, q, q))
    finally:
        for name in [n for n in sys.modules if n == "fixture_fa2" or n.startswith("fixture_fa2.")]:
            del sys.modules[name]


def test_binding_sys_modules_alone_runs_the_submodule_a_second_time(tmp_path):
    """Why alias exists: what the kernels-community test environments did before it."""
    folder = _copy(tmp_path, ATTN)
    code = f"""
        import sys, jitkernels
        k = jitkernels.load_local({str(folder)!r}, backend="cpu")
        first = k.flash_attn_interface
        sys.modules["naive_fa2"] = k
        import naive_fa2.flash_attn_interface as second
        print(second is first, second.__file__ == first.__file__)
    """
    from conftest import run_python

    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]  # one file, two modules: its custom ops defined twice


def test_alias_true_is_the_kernels_own_package_name_and_a_taken_name_is_refused(tmp_path):
    from conftest import run_python

    folder = _copy(tmp_path, ATTN)
    code = f"""
        import sys, json as taken, jitkernels
        from jitkernels.errors import KernelImportError
        k = jitkernels.load_local({str(folder)!r}, backend="cpu", alias=True)
        import attn_interface.flash_attn_interface
        print(sys.modules["attn_interface"] is k, attn_interface.flash_attn_interface is k.flash_attn_interface)
        for name in ("json", "not-a-name"):
            try:
                jitkernels.load_local({str(folder)!r}, backend="cpu", alias=name)
            except KernelImportError as exc:
                print(str(exc).split(":")[0], sys.modules["json"] is taken)
    """
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["True True", "alias 'json' True", "alias 'not-a-name' True"]


# -- jitkernels test ----------------------------------------------------------------------------------

def _jk_test(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jitkernels", "test", *args], capture_output=True, text=True,
                          timeout=900, env=child_env(**env))


def test_runs_a_kernels_own_suite_and_leaves_its_tree_as_it_was(tmp_path):
    folder = _copy(tmp_path, ATTN)
    before = _files(folder)
    out = _jk_test(str(folder), "-q")
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^3 passed", out.stdout, re.M), out.stdout
    assert "importable as attn_interface" in out.stderr
    assert _files(folder) == before  # no __pycache__, no .pytest_cache in the kernel's folder


def test_an_edit_is_what_the_next_run_tests(tmp_path):
    folder = _copy(tmp_path, ATTN)
    assert _jk_test(str(folder), "-q").returncode == 0
    interface = folder / "torch-ext" / "attn_interface" / "flash_attn_interface.py"
    interface.write_text(interface.read_text().replace("* softmax_scale", "* softmax_scale * 2"))
    out = _jk_test(str(folder), "-q")
    assert out.returncode == 1
    assert re.search(r"^2 failed, 1 passed", out.stdout, re.M), out.stdout


def test_a_file_or_test_named_on_the_command_line_is_all_that_runs(tmp_path):
    """``jitkernels test NAME tests/test_x.py`` used to run every file of tests/ as well (both were given to pytest)."""
    folder = _copy(tmp_path, ATTN)
    (folder / "tests" / "test_elsewhere.py").write_text("def test_not_asked_for():\n    assert False\n")
    out = _jk_test(str(folder), "tests/test_attn_interface.py", "-q")
    assert out.returncode == 0 and re.search(r"^3 passed in", out.stdout, re.M), out.stdout + out.stderr
    out = _jk_test(str(folder), "-q", "tests/test_attn_interface.py::test_the_op_of_the_submodule")
    assert out.returncode == 0 and re.search(r"^1 passed in", out.stdout, re.M), out.stdout + out.stderr
    out = _jk_test(str(folder), "-q", "-k", "tests or op_of")  # an option's value that looks like a folder's name
    assert re.search(r"^1 failed, 3 passed in", out.stdout, re.M), out.stdout + out.stderr


def _as_paged_attention_lays_out_its_tests(folder: Path) -> None:
    """kernels-community paged-attention: ``tests/kernels/{__init__,conftest,utils,test_*}.py``, relative imports,
    no ``tests/__init__.py``; pytest then imports the folder as the top-level package ``kernels``."""
    tests = folder / "tests"
    (tests / "__init__.py").unlink()
    (tests / "kernels").mkdir()
    (tests / "kernels" / "__init__.py").write_text("")
    (tests / "kernels" / "conftest.py").write_text(
        "import pytest\nimport torch\n\n\n@pytest.fixture\ndef seeded():\n    torch.manual_seed(0)\n")
    (tests / "kernels" / "utils.py").write_text("HEADS = 4\n")
    test = (tests / "test_attn_interface.py").read_text()
    test = test.replace("def test_matches_sdpa_with_grouped_query_heads():",
                        "def test_matches_sdpa_with_grouped_query_heads(seeded):\n    assert HEADS == 4")
    (tests / "kernels" / "test_attention.py").write_text("from .utils import HEADS\n" + test)
    (tests / "test_attn_interface.py").unlink()


@pytest.mark.parametrize("autopatch", ["0", "1"])
def test_a_suite_whose_tests_folder_is_named_kernels_runs_as_in_its_own_ci(tmp_path, autopatch):
    """paged-attention's suite failed to collect (``No module named 'kernels.conftest'``): upstream ``kernels``,
    imported to be patched, took the name its ``tests/kernels/`` package gets."""
    pytest.importorskip("kernels")
    folder = _copy(tmp_path, ATTN)
    _as_paged_attention_lays_out_its_tests(folder)
    out = _jk_test(str(folder), "-q", JITKERNELS_AUTOPATCH=autopatch)
    assert out.returncode == 0 and re.search(r"^3 passed in", out.stdout, re.M), out.stdout + out.stderr
    assert "tests/kernels/ package is imported as `kernels`" in out.stderr


def test_after_such_a_suite_kernels_is_upstreams_again_in_the_same_process(tmp_path):
    pytest.importorskip("kernels")
    folder = _copy(tmp_path, ATTN)
    _as_paged_attention_lays_out_its_tests(folder)
    out = run_python("""
        import sys
        from jitkernels.cli import kernel_tests
        for imported_before in (False, True):
            if imported_before:
                import kernels
            code, _ = kernel_tests.run(sys.argv[1], ["-q"], say=lambda line: None)
            import kernels
            print(code, hasattr(kernels, "get_kernel"), "kernels.conftest" in sys.modules)
            del sys.modules["kernels"]
    """, str(folder))
    results = [line for line in out.stdout.splitlines() if re.match(r"^\d+ (True|False) (True|False)$", line)]
    assert results == ["0 True False", "0 True False"], out.stdout + out.stderr


def test_a_patch_made_before_kernels_was_imported_survives_such_a_suite(tmp_path):
    """The suite's ``kernels`` package used up the one-shot post-import hook: upstream's, imported after the run,
    stayed unpatched. The run also left its own LOCAL_KERNELS entry behind."""
    pytest.importorskip("kernels")
    folder = _copy(tmp_path, ATTN)
    _as_paged_attention_lays_out_its_tests(folder)
    out = run_python("""
        import os, sys
        import jitkernels
        from jitkernels.cli import kernel_tests
        from jitkernels.upstream import patching
        jitkernels.patch()
        code, _ = kernel_tests.run(sys.argv[1], ["-q"], say=lambda line: None)
        import kernels
        print("RESULT", code, ("kernels", "get_kernel") in patching.patched_bindings(), os.environ.get("LOCAL_KERNELS"))
    """, str(folder), LOCAL_KERNELS="")
    assert "RESULT 0 True \n" in out.stdout + "\n", out.stdout + out.stderr


@pytest.mark.parametrize("layout, names", [
    ({"kernels/__init__.py"}, {"kernels"}),  # paged-attention
    ({"unit/kernels/__init__.py", "unit/test_x.py"}, {"kernels"}),  # one folder deeper
    ({"__init__.py", "kernels/__init__.py"}, {"tests"}),  # tests/ is the package: tests.kernels
    ({"kernels/test_x.py"}, set()),  # no package: the file is a module of its own name
])
def test_the_package_names_pytest_gives_a_suite(tmp_path, layout, names):
    from jitkernels.cli.kernel_tests import _top_level_packages

    for rel in layout:
        (tmp_path / "tests" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tests" / rel).write_text("")
    assert set(_top_level_packages(tmp_path / "tests")) == names


def test_time_box_and_json(tmp_path):
    folder = _copy(tmp_path, ATTN)
    out = _jk_test(str(folder), "--time-box", "0.001", "--json", "--", "-p", "no:randomly")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["cut_after"] == 1 and summary["outcomes"] == {"passed": 1}
    assert summary["package"] == "attn_interface" and summary["kernel"] == "kernels-test/attn-interface"
    assert "cut by the 0.001s time box after 1 tests" in out.stderr


def test_a_name_that_is_no_kernel_folder_gets_close_names(tmp_path):
    relu = tmp_path / "relu"
    relu.mkdir()
    out = _jk_test("rleu", LOCAL_KERNELS=f"kernels-community/relu={relu}")
    assert out.returncode == 1
    assert "not a kernel source tree" in out.stderr and "Did you mean kernels-community/relu (LOCAL_KERNELS)?" in out.stderr
    with pytest.raises(InvalidKernelNameError, match="no tests/ folder"):
        from jitkernels.cli.kernel_tests import find_suite

        (tmp_path / "k").mkdir()
        (tmp_path / "k" / "build.toml").write_text('[general]\nname = "k"\n')
        find_suite(str(tmp_path / "k"))


# -- real kernels-community suites (JITKERNELS_KC) --------------------------------------------------------

@pytest.fixture(scope="module")
def kc_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("kc-cache")


@needs_kc
@pytest.mark.slow
def test_relu_suite_through_kernels_get_kernel_and_an_incremental_edit(tmp_path, kc_cache):
    pytest.importorskip("kernels")
    folder = _copy(tmp_path, Path(KC) / "relu")
    out = _jk_test(str(folder), "-q", JITKERNELS_CACHE=kc_cache)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(r"^2 passed", out.stdout, re.M), out.stdout
    assert "kernels.get_kernel('kernels-community/relu', ...) gives the same module" in out.stderr
    source = folder / "relu_cpu" / "relu_cpu.cpp"
    text = source.read_text()
    assert "std::max" in text or "0.0" in text or ">" in text  # the kernel's relu is there to break
    source.write_text(text + "\n// edited\n")  # an edit that recompiles one unit and changes nothing else
    again = _jk_test(str(folder), "-q", JITKERNELS_CACHE=kc_cache)
    assert again.returncode == 0, again.stderr[-3000:]
    built = [l for l in again.stderr.splitlines() if l.startswith("jitkernels: building _relu_cpu_")]
    assert built and built[-1].split(": ", 2)[2].startswith("3/3 steps")
    # the workspace kept the binding's object: only the edited unit (and the link) ran
    assert not [l for l in built if "torch_binding.cpp" in l], built


@needs_kc
@pytest.mark.slow
def test_rmsnorm_suite_imports_the_package_by_name(kc_cache):
    out = _jk_test(str(Path(KC) / "rmsnorm"), "-q", "-k", "not compile", JITKERNELS_CACHE=kc_cache)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(r"^2 passed, 1 deselected", out.stdout, re.M), out.stdout
    assert "importable as rmsnorm" in out.stderr
