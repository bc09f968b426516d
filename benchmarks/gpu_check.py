"""GPU check: build real kernels-community kernels for the local arch, check them against PyTorch.

Run on a machine with a CUDA GPU, nvcc and a CUDA build of torch:

    python benchmarks/gpu_check.py --kc /path/to/kernels-community [--kernels activation,relu,...]

Each kernel is served through ``LOCAL_KERNELS`` (its source tree, never a
prebuilt binary), loaded with ``jitkernels.load`` into a fresh cache (cold
build, timed), checked against a PyTorch reference on random inputs, then
loaded again in a new process with ``JITKERNELS_DISABLE_BUILD=1`` (must hit
the cache). ``rmsnorm`` has no CUDA kernel upstream (backends cpu/xpu), so it
is built and checked for ``cpu``. Prints a table; ``--json`` writes it too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

BACKEND = {"rmsnorm": "cpu"}


def _close(a, b, atol, rtol):
    return torch.allclose(a.float(), b.float(), atol=atol, rtol=rtol), (a.float() - b.float()).abs().max().item()


def check_activation(k, dev):
    results = []
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)):
        x = torch.randn(67, 2 * 1024, device=dev, dtype=dtype)
        d = x.shape[-1] // 2
        out = torch.empty(67, d, device=dev, dtype=dtype)
        k.silu_and_mul(out, x)
        results.append(_close(out, F.silu(x[:, :d].float()) * x[:, d:].float(), tol, tol))
        k.gelu_tanh_and_mul(out, x)
        results.append(_close(out, F.gelu(x[:, :d].float(), approximate="tanh") * x[:, d:].float(), tol, tol))
        y = torch.empty_like(x)
        k.gelu(y, x)
        results.append(_close(y, F.gelu(x.float()), tol, tol))
    return results


def check_relu(k, dev):
    x = torch.randn(1024, 1024, device=dev)
    return [_close(k.relu(x), F.relu(x), 0, 0)]


def check_rotary(k, dev):
    results = []
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        b, s, h, dim = 2, 128, 8, 64
        q = torch.randn(b, s, h, dim, device=dev, dtype=dtype)
        cos = torch.randn(s, 1, dim // 2, device=dev, dtype=dtype)
        sin = torch.randn(s, 1, dim // 2, device=dev, dtype=dtype)
        x1, x2 = q[..., : dim // 2], q[..., dim // 2:]
        e1 = x1.float() * cos.float() - x2.float() * sin.float()
        e2 = x1.float() * sin.float() + x2.float() * cos.float()
        o1, o2 = torch.empty_like(x1), torch.empty_like(x2)
        k.apply_rotary(x1, x2, cos, sin, o1, o2, False)
        results += [_close(o1, e1, tol, tol), _close(o2, e2, tol, tol)]
    return results


def check_rmsnorm(k, dev):
    x = torch.randn(33, 512, device=dev)
    w = torch.rand(512, device=dev)
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    return [_close(k.apply_rms_norm(x, w, 1e-6), expected, 1e-4, 1e-4)]


def check_cv_utils(k, dev):
    import torchvision

    boxes = torch.rand(500, 4, device=dev) * 100
    boxes[:, 2:] += boxes[:, :2] + 1
    scores = torch.rand(500, device=dev)
    keep = k.generic_nms(boxes, scores, 0.5, False)
    expected = torchvision.ops.nms(boxes.float(), scores.float(), 0.5)
    same = set(keep.cpu().tolist()) == set(expected.cpu().tolist())
    return [(same, float(len(set(keep.cpu().tolist()) ^ set(expected.cpu().tolist()))))]


def check_layer_norm(k, dev):
    results = []
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        x = torch.randn(4, 64, 1024, device=dev, dtype=dtype)
        w = torch.rand(1024, device=dev, dtype=dtype)
        layer = k.layers.LayerNorm()
        layer.weight, layer.variance_epsilon = w, 1e-5
        expected = F.layer_norm(x.float(), (1024,), w.float(), None, 1e-5)
        results.append(_close(layer(x), expected, tol, tol))
        rms = k.layers.LlamaRMSNorm()
        rms.weight, rms.variance_epsilon = w, 1e-5
        expected = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5) * w.float()
        results.append(_close(rms(x), expected, tol, tol))
    return results


CHECKS = {
    "activation": check_activation,
    "relu": check_relu,
    "rotary": check_rotary,
    "rmsnorm": check_rmsnorm,
    "cv-utils": check_cv_utils,
    "layer-norm": check_layer_norm,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kc", required=True, help="kernels-community checkout")
    parser.add_argument("--kernels", default="activation,relu,rotary,rmsnorm,cv-utils")
    parser.add_argument("--cache", default=None, help="JitKernels cache (default: a fresh temp folder)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    names = [n for n in args.kernels.split(",") if n]
    kc = Path(args.kc).resolve()
    os.environ["JITKERNELS_CACHE"] = args.cache or tempfile.mkdtemp(prefix="jk-gpu-")
    os.environ["LOCAL_KERNELS"] = ":".join(f"kernels-community/{n}={kc / n}" for n in names)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import jitkernels

    dev_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"device: {dev_name}, torch {torch.__version__}, cuda {torch.version.cuda}, "
          f"jitkernels {jitkernels.__version__}, cache {os.environ['JITKERNELS_CACHE']}", flush=True)
    rows = []
    for name in names:
        backend = BACKEND.get(name, "cuda")
        dev = "cuda" if backend == "cuda" else "cpu"
        row = {"kernel": name, "backend": backend}
        try:
            i = jitkernels.inspect("hf", name, backend=backend)
            row.update(strategy=i.strategy, extension=i.expected_extension_name)
            start = time.perf_counter()
            k = jitkernels.load("hf", name, backend=backend)
            row["cold_s"] = round(time.perf_counter() - start, 2)
            checks = CHECKS[name](k, dev)
            row["checks"] = f"{sum(ok for ok, _ in checks)}/{len(checks)}"
            row["max_err"] = max(err for _, err in checks)
            code = (
                "import time, torch; t = time.perf_counter(); import jitkernels; "
                f"k = jitkernels.load('hf', {name!r}, backend={backend!r}); "
                "print(round((time.perf_counter() - t) * 1e3, 2))"
            )
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 env=dict(os.environ, JITKERNELS_DISABLE_BUILD="1"), timeout=300)
            row["warm_new_process_ms"] = out.stdout.strip() if out.returncode == 0 else f"FAILED: {out.stderr[-300:]}"
        except Exception as exc:  # report and go on with the next kernel
            row["error"] = f"{type(exc).__name__}: {str(exc)[:1500]}"
        rows.append(row)
        print(json.dumps(row), flush=True)

    print("\n| kernel | backend | strategy | cold build+load (s) | checks vs torch | max err | warm load, new process (ms) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kernel']} | {r['backend']} | {r.get('strategy', '-')} | {r.get('cold_s', '-')} | "
              f"{r.get('checks', r.get('error', '-')[:80])} | {r.get('max_err', '-')} | {r.get('warm_new_process_ms', '-')} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    ok = all(r.get("checks", "0/1").split("/")[0] == r.get("checks", "0/1").split("/")[1] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
