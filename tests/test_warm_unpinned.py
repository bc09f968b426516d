"""Warm loads that need no resolution: local folders (a stat-checked memo) and offline unpinned Hub kernels.

Each runs in a fresh process and checks what a warm load must not do: import the pipeline
(planning, tomllib, huggingface_hub), hash files or ask the Hub.
"""

from __future__ import annotations

import os
import shutil

from conftest import EXAMPLES, run_python

HEAVY = ("jitkernels.pipeline", "huggingface_hub", "jitkernels.plan.planner", "jitkernels.plan.buildconfig")

REPORT = """
import sys
print(m.__name__, [n for n in {heavy!r} if n in sys.modules])
"""


def _child(code: str, **env) -> list[str]:
    out = run_python(code, **env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split(" ", 1)


def test_local_kernel_warm_load_is_a_stat_check_and_an_import(tmp_path):
    folder = tmp_path / "rms-norm"
    shutil.copytree(EXAMPLES / "rms-norm", folder)
    local = f"kernels-community/rms-norm={folder}"
    code = "import torch, jitkernels\nm = jitkernels.load('hf', 'rms-norm', backend='cpu')\n" + REPORT.format(heavy=HEAVY)
    first_name, first_heavy = _child(code, LOCAL_KERNELS=local)
    assert "jitkernels.pipeline" in first_heavy  # cold: planned and prepared
    name, heavy = _child(code, LOCAL_KERNELS=local)
    assert name == first_name and heavy.strip() == "[]"
    hook = "import torch\nfrom jitkernels.hub.hf import rms_norm as m\n" + REPORT.format(heavy=HEAVY)
    _name, heavy = _child(hook, LOCAL_KERNELS=local)
    assert heavy.strip() == "[]"
    direct = f"import torch, jitkernels\nm = jitkernels.load_local({str(folder)!r}, backend='cpu')\n" + REPORT.format(heavy=HEAVY)
    _child(direct)  # load_local keeps its own memo (the folder is the key)
    _name, heavy = _child(direct)
    assert heavy.strip() == "[]"

    # an edit anywhere in the folder: planned and hashed again, the new code is what loads
    functional = folder / "torch-ext" / "rms_norm" / "functional.py"
    functional.write_text(functional.read_text() + "\nEDITED = True\n")
    code_edit = code + "print(getattr(sys.modules[m.__name__ + '.functional'], 'EDITED', False))\n"
    out = run_python(code_edit, LOCAL_KERNELS=local)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split("\n")
    assert lines[0].split(" ", 1)[0] != first_name and "jitkernels.pipeline" in lines[0] and lines[1] == "True"


def test_offline_unpinned_hub_load_uses_the_last_resolved_commit_without_the_hub(online):
    import jitkernels

    k = jitkernels.load("hf", "jitkernels-examples/rms-norm", backend="cpu")  # default revision, online
    # in a child: importing the Triton kernel here would fix Triton's mode for later tests of this process
    v_name, _ = _child("import torch, jitkernels\nm = jitkernels.load('hf', 'triton-layer-norm', version=1, "
                       "backend='cpu')\n" + REPORT.format(heavy=HEAVY), HF_ENDPOINT=online.endpoint)
    online.down = True
    for call in ("jitkernels.load('hf', 'jitkernels-examples/rms-norm', backend='cpu')",
                 "jitkernels.load('hf', 'triton-layer-norm', version=1, backend='cpu')"):
        code = f"import torch, jitkernels\nm = {call}\n" + REPORT.format(heavy=HEAVY)
        name, heavy = _child(code, HF_HUB_OFFLINE="1", HF_ENDPOINT=online.endpoint)
        assert name in (k.__name__, v_name) and heavy.strip() == "[]", (call, heavy)
    hook = "import torch\nfrom jitkernels.hub.hf import jitkernels_examples__rms_norm as m\n" + REPORT.format(heavy=HEAVY)
    name, heavy = _child(hook, HF_HUB_OFFLINE="1")
    assert name == "jitkernels.hub.hf.jitkernels_examples__rms_norm" and heavy.strip() == "[]"


def test_a_same_size_edit_that_keeps_the_mtime_is_still_seen(tmp_path):
    """cp -p, rsync -a and tar keep the mtime; the memo also compares ctime and inode."""
    folder = tmp_path / "rms-norm"
    shutil.copytree(EXAMPLES / "rms-norm", folder)
    init = folder / "torch-ext" / "rms_norm" / "__init__.py"
    init.write_text(init.read_text() + "MARK = 1\n")
    code = f"import torch, jitkernels\nprint(jitkernels.load_local({str(folder)!r}, backend='cpu').MARK)\n"
    for _ in range(2):  # cold, then warm from the memo
        assert _child(code)[0].strip() == "1"
    stat = init.stat()
    init.write_text(init.read_text().replace("MARK = 1", "MARK = 2"))
    os.utime(init, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    assert _child(code)[0].strip() == "2"
