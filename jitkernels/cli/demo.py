"""``jitkernels demo``: the bundled example kernels, served by a local Hub, loaded through the real pipeline.

It starts :class:`jitkernels.testing.hubserver.FakeHub` on 127.0.0.1, points
huggingface_hub at it (``HF_ENDPOINT``) with a private cache, then loads a
pure-Python kernel and compiles a native CPU kernel exactly as it would from
huggingface.co, checks both against PyTorch, and times a warm load in a new
process. Progress and the compiling/built lines go to stderr as everywhere
(:func:`jitkernels.log.show`); the demo adds no log handler of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples" / "kernels"
ORG = "jitkernels-examples"


def _say(text: str) -> None:
    print(text, flush=True)


def _import_torch():
    """torch, without its warning when NumPy is missing (``pip install torch jitkernels`` brings none): the
    demo needs no NumPy, and that warning would be the first thing a newcomer sees."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
        import torch
    return torch


def run_demo(native: bool = True) -> int:
    from ..testing.hubserver import FakeHub

    work = Path(tempfile.mkdtemp(prefix="jitkernels-demo-"))
    hub = FakeHub()
    commits = {
        name: hub.add_repo_from_dirs(f"{ORG}/{name}", {"main": EXAMPLES / name})["main"]
        for name in ("rms-norm", "scaled-add")
    }
    hub.set_org(ORG, trusted=True)
    with hub:
        os.environ.update(
            HF_ENDPOINT=hub.endpoint,
            HF_HOME=str(work / "hf"),
            HF_HUB_DISABLE_TELEMETRY="1",
            JITKERNELS_CACHE=str(work / "cache"),
        )
        torch = _import_torch()

        import jitkernels
        from .tables import inspection as _table

        _say(f"Local Hub at {hub.endpoint}, cache in {work}\n")
        _say(f"== jitkernels inspect {ORG}/rms-norm")
        _say(_table(jitkernels.inspect("hf", f"{ORG}/rms-norm", backend="cpu")) + "\n")
        start = time.perf_counter()
        rms = jitkernels.load("hf", f"{ORG}/rms-norm", revision="main", backend="cpu")
        _say(f"loaded {rms.__name__} in {(time.perf_counter() - start) * 1e3:.0f} ms (download + import)")
        x, w = torch.randn(8, 64), torch.rand(64)
        expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
        error = (rms.rms_norm(x, w) - expected).abs().max().item()
        _say(f"rms_norm max error vs PyTorch: {error:.2e}\n")
        ok = error < 1e-5
        if native:
            ok = _native_part(jitkernels, torch, commits["scaled-add"], hub) and ok
    _say("demo " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


def _native_part(jitkernels, torch, commit: str, hub) -> bool:
    name = f"{ORG}/scaled-add"
    from .tables import inspection as _table

    _say(f"== jitkernels inspect {name} --backend cpu")
    _say(_table(jitkernels.inspect("hf", name, backend="cpu")) + "\n")
    _say("compiling it for this machine (first use only; progress below) ...")
    start = time.perf_counter()
    kernel = jitkernels.load("hf", name, revision=commit, backend="cpu")
    _say(f"built and loaded {kernel.__name__} in {time.perf_counter() - start:.1f} s")
    x, y = torch.randn(1 << 16), torch.randn(1 << 16)
    ok = torch.allclose(kernel.scaled_add(x, y, 0.5), x + 0.5 * y)
    _say(f"scaled_add matches PyTorch: {ok}")
    code = (
        "import time, torch; t = time.perf_counter(); import jitkernels; "
        f"k = jitkernels.load('hf', {name!r}, revision={commit!r}, backend='cpu'); "
        "print(f'{(time.perf_counter() - t) * 1e3:.2f}')"
    )
    hub.down = True  # the warm path needs no network
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=120)
    finally:
        hub.down = False
    if out.returncode != 0:
        _say(f"warm load in a new process FAILED:\n{out.stderr}")
        return False
    _say(f"warm load in a new process (offline, Hub down): {out.stdout.strip()} ms, no compiler, no network\n")
    return ok
