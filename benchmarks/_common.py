"""Shared plumbing for the JitKernels benchmarks (stdlib only; the parent process never imports torch).

Every measurement runs in a fresh ``python -c`` child. A child prints one line
``BENCH_RESULT {json}`` with at least ``ms`` (the timed region, measured inside
the child with ``time.perf_counter``). Variants are interleaved: in round ``r``
the variant order is rotated by ``r``, so machine noise and ordering effects
hit every variant alike.

kernels-community is never copied into the repository: the scripts take the
path of a checkout from ``--kc PATH`` or ``JITKERNELS_KC`` and copy what they
need into a temporary work folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT_TAG = "BENCH_RESULT "
MARK = "BENCH_TIMED_REGION_STARTS"
MARK_END = "BENCH_TIMED_REGION_ENDS"

#: kernel-builder's default TORCH_CUDA_ARCH_LIST for CUDA 13 (the "full list" of bench_cold_build).
KERNEL_BUILDER_CUDA13_ARCHS = "7.5;8.0;8.6;8.7;8.9;9.0;10.0;11.0;12.0;12.1+PTX"

#: A correctness check per known kernel, run in the child *after* the timed region.
#: ``OPS`` is ``torch.ops.<extension name>``, ``DEV`` the torch device string.
OP_CHECKS = {
    "relu": (
        "x = torch.randn(4099, device=DEV)\n"
        "out = torch.empty_like(x)\n"
        "OPS.relu(out, x)\n"
        "assert torch.equal(out, torch.relu(x)), 'relu result differs from torch.relu'\n"
    ),
    "activation": (
        "x = torch.randn(64, 512, device=DEV, dtype=torch.float16)\n"
        "out = torch.empty(64, 256, device=DEV, dtype=torch.float16)\n"
        "OPS.silu_and_mul(out, x)\n"
        "ref = torch.nn.functional.silu(x[:, :256].float()) * x[:, 256:].float()\n"
        "assert torch.allclose(out.float(), ref, atol=2e-2, rtol=2e-2), 'silu_and_mul result differs from torch'\n"
    ),
}


# -- arguments ---------------------------------------------------------------------------------

def add_common_args(parser: argparse.ArgumentParser, repeats: int, warmup: int = 1) -> None:
    parser.add_argument("--kc", default=os.environ.get("JITKERNELS_KC"),
                        help="path of a kernels-community checkout (default: $JITKERNELS_KC)")
    parser.add_argument("--repeats", type=int, default=repeats, help=f"measured rounds (default {repeats})")
    parser.add_argument("--warmup", type=int, default=warmup,
                        help=f"discarded rounds before measuring (default {warmup})")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for the child processes (default: this one)")
    parser.add_argument("--bytecode", choices=("prefix", "inplace", "off"), default="prefix",
                        help="children's .pyc handling: 'prefix' (default) writes and reuses .pyc under a "
                             "private PYTHONPYCACHEPREFIX in the work folder; 'inplace' is Python's default "
                             "(__pycache__ next to the sources); 'off' sets PYTHONDONTWRITEBYTECODE=1 "
                             "(every module not already compiled is compiled from source on each run)")
    parser.add_argument("--workdir", help="work folder to use and keep (default: a temporary folder, removed)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per child process")


def kc_root(args) -> Path:
    if not args.kc:
        sys.exit("Give the kernels-community checkout with --kc PATH or JITKERNELS_KC=PATH.")
    root = Path(args.kc).expanduser().resolve()
    if not root.is_dir():
        sys.exit(f"--kc {root}: not a folder")
    return root


def kernel_dir(args, kernel: str) -> Path:
    folder = kc_root(args) / kernel
    if not (folder / "build.toml").is_file():
        sys.exit(f"{folder}: no build.toml (is --kc a kernels-community checkout, and {kernel!r} a kernel of it?)")
    return folder


class Workdir:
    """A temporary work folder (kept when ``--workdir`` names one)."""

    def __init__(self, args, prefix: str):
        if args.workdir:
            self.path = Path(args.workdir).expanduser().resolve()
            self.path.mkdir(parents=True, exist_ok=True)
            self.keep = True
        else:
            self.path = Path(tempfile.mkdtemp(prefix=prefix))
            self.keep = False

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc) -> None:
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


# -- child processes ---------------------------------------------------------------------------

def child_env(args, work: Path, **extra) -> dict:
    """The environment of a child: isolated caches, repo on PYTHONPATH, bytecode per ``--bytecode``."""
    env = dict(os.environ)
    for var in ("LOCAL_KERNELS", "HF_HUB_CACHE", "HF_ENDPOINT", "HF_HUB_OFFLINE", "PYTHONPYCACHEPREFIX",
                "PYTHONDONTWRITEBYTECODE", "JITKERNELS_DISABLE_BUILD", "JITKERNELS_VERBOSE"):
        env.pop(var, None)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if args.bytecode == "prefix":
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    elif args.bytecode == "off":
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def timed_child_code(body: str, check: str = "", setup: str = "", result: str = "") -> str:
    """Child source: ``import torch``, then time ``body`` (which sets what ``check`` verifies).

    ``setup`` runs before the clock starts (after ``import torch``); ``result`` may add keys to
    the dict ``R`` printed at the end.
    """
    def indent(text: str) -> str:
        return textwrap.dedent(text).strip("\n")

    return "\n".join([
        "import json, sys, time",
        "import torch",
        indent(setup),
        "_before = set(sys.modules)",
        f"print({MARK!r}, file=sys.stderr, flush=True)",
        "_t0 = time.perf_counter()",
        indent(body),
        "_t1 = time.perf_counter()",
        f"print({MARK_END!r}, file=sys.stderr, flush=True)",
        "_new = sorted(set(sys.modules) - _before)",
        "R = {'ms': (_t1 - _t0) * 1e3, 'new_modules': len(_new),",
        "     'hf_hub_imported': 'huggingface_hub' in sys.modules,",
        "     'cpp_extension_imported': 'torch.utils.cpp_extension' in sys.modules}",
        indent(check),
        indent(result),
        f"print({RESULT_TAG!r} + json.dumps(R), flush=True)",
        "",
    ])


def run_child(args, code: str, env: dict, cwd: Path, what: str) -> dict:
    """Run one child; return its BENCH_RESULT dict plus ``wall_ms`` (process start to exit) and ``stderr``."""
    start = time.perf_counter()
    proc = subprocess.run([args.python, "-c", code], env=env, cwd=str(cwd), capture_output=True,
                          text=True, timeout=args.timeout)
    wall = (time.perf_counter() - start) * 1e3
    return parse_child(proc.returncode, proc.stdout, proc.stderr, wall, what)


def parse_child(returncode: int, stdout: str, stderr: str, wall_ms: float, what: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_TAG)]
    if returncode != 0 or not lines:
        tail = "\n".join((stderr or "").splitlines()[-40:])
        raise RuntimeError(f"{what}: child failed (exit {returncode}).\n--- stdout ---\n{stdout[-3000:]}\n"
                           f"--- stderr (tail) ---\n{tail}")
    result = json.loads(lines[-1][len(RESULT_TAG):])
    result["wall_ms"] = wall_ms
    result["stderr"] = stderr
    return result


def importtime_report(args, code: str, env: dict, cwd: Path, what: str, top: int = 15) -> str:
    """Run ``code`` once under ``python -X importtime``; the imports of the timed region, slowest first."""
    proc = subprocess.run([args.python, "-X", "importtime", "-c", code], env=env, cwd=str(cwd),
                          capture_output=True, text=True, timeout=args.timeout)
    res = parse_child(proc.returncode, proc.stdout, proc.stderr, 0.0, what)
    lines = proc.stderr.splitlines()
    try:
        lines = lines[lines.index(MARK) + 1:lines.index(MARK_END)]
    except ValueError:
        raise RuntimeError(f"{what}: timed-region markers not found in the -X importtime output")
    rows = []
    for line in lines:
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, name = line[len("import time:"):].split("|", 2)
        depth = max(0, (len(name) - len(name.lstrip()) - 1) // 2)
        rows.append((int(cum_us), int(self_us), depth, name.strip()))
    top_level = sum(cum for cum, _, depth, _ in rows if depth == 0)
    out = [f"{what}: timed region {res['ms']:.2f} ms under -X importtime (which adds overhead); "
           f"{len(rows)} modules imported in it, top-level imports {top_level / 1e3:.2f} ms. Slowest (self time):",
           markdown_table(["module", "self ms", "cumulative ms"],
                          [[("  " * d) + n, fmt(s / 1e3), fmt(c / 1e3)] for c, s, d, n in
                           sorted(rows, key=lambda r: -r[1])[:top]])]
    return "\n".join(out)


def interleaved(args, variants: dict, cwd: Path, rounds: int | None = None,
                warmup: int | None = None, log=print) -> dict[str, list[dict]]:
    """Run every variant once per round, rotating the order each round; warm-up rounds are discarded.

    ``variants`` maps a name to ``(code, env)`` or to a callable ``round -> (code, env)``.
    """
    names = list(variants)
    rounds = args.repeats if rounds is None else rounds
    warmup = args.warmup if warmup is None else warmup
    samples: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        measured = r >= warmup
        for name in order:
            spec = variants[name]
            code, env = spec(r) if callable(spec) else spec  # a factory gets the round index
            res = run_child(args, code, env, cwd, what=name)
            res.pop("stderr", None)
            if measured:
                samples[name].append(res)
        label = f"round {r - warmup + 1}/{rounds}" if measured else f"warm-up {r + 1}/{warmup}"
        if measured:
            last = "  ".join(f"{n}={samples[n][-1]['ms']:.2f}ms" for n in names)
        else:
            last = "(discarded)"
        log(f"  {label}: {last}", file=sys.stderr, flush=True)
    return samples


# -- statistics and output ---------------------------------------------------------------------

def measure_warm(args, variants: dict, cwd: Path) -> tuple[dict, dict, list[str]]:
    """The warm-load benchmarks' measurement: interleaved rounds, summary, optional importtime reports."""
    print(f"measuring {args.repeats} rounds (+{args.warmup} warm-up) of {', '.join(variants)}", file=sys.stderr)
    samples = interleaved(args, variants, cwd)
    reports = []
    if args.importtime:
        for which in ("jitkernels", "upstream"):
            reports.append(importtime_report(args, variants[which][0], variants[which][1], cwd, which))
    return samples, summarize(samples), reports


def stats(values: list[float]) -> dict:
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def summarize(samples: dict[str, list[dict]], key: str = "ms") -> dict[str, dict]:
    return {name: {**stats([s[key] for s in runs]), "samples": [round(s[key], 4) for s in runs]}
            for name, runs in samples.items()}


def fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def machine_info(args, work: Path, backend: str = "cpu") -> dict:
    """Facts about the machine, the interpreter and torch (torch facts come from a child)."""
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": args.python,
    }
    info.update(code_state())
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    code = (
        "import json, sys, torch\n"
        "d = {'python_version': sys.version.split()[0], 'torch': torch.__version__, 'torch_cuda': torch.version.cuda}\n"
        f"if {backend!r} == 'cuda' and torch.cuda.is_available():\n"
        "    d['gpu'] = torch.cuda.get_device_name(0)\n"
        "    d['gpu_capability'] = '.'.join(map(str, torch.cuda.get_device_capability(0)))\n"
        "try:\n"
        "    import kernels, importlib.metadata as m\n"
        "    d['kernels'] = m.version('kernels')\n"
        "except Exception:\n"
        "    d['kernels'] = None\n"
        f"print({RESULT_TAG!r} + json.dumps(d))\n"
    )
    proc = subprocess.run([args.python, "-c", code], env=child_env(args, work), cwd=str(work),
                          capture_output=True, text=True, timeout=300)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            info.update(json.loads(line[len(RESULT_TAG):]))
    return info


def code_state() -> dict:
    """Which jitkernels code was measured: git HEAD, whether jitkernels/ has uncommitted changes, a content hash."""
    import hashlib

    state: dict = {"measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        state["git_head"] = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                                           capture_output=True, text=True, timeout=30).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "jitkernels"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        state["jitkernels_uncommitted_changes"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "jitkernels").rglob("*.py")):
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    state["jitkernels_sources_sha256"] = digest.hexdigest()[:16]
    return state


def describe_code(info: dict) -> str:
    dirty = " + uncommitted jitkernels/ changes" if info.get("jitkernels_uncommitted_changes") else ""
    return (f"Code: git {info.get('git_head', '?')}{dirty} (jitkernels sources sha256 "
            f"{info.get('jitkernels_sources_sha256', '?')}), measured {info.get('measured_at', '?')}")


def write_json(path: str | None, data: dict) -> None:
    if not path:
        return
    Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    Path(path).expanduser().write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    print(f"JSON written to {path}", file=sys.stderr)


# -- kernels-community sources -----------------------------------------------------------------

def read_build_toml(folder: Path) -> dict:
    with open(folder / "build.toml", "rb") as fh:
        return tomllib.load(fh)


def stable_abi(build: dict, backend: str) -> str | None:
    """``[torch.stable-abi] <backend> = "2.10"`` of a build.toml, or None."""
    value = (build.get("torch") or {}).get("stable-abi") or {}
    return value.get(backend) if isinstance(value, dict) else None


def python_name(build: dict) -> str:
    return build["general"]["name"].replace("-", "_")


def cpp_sources(folder: Path, build: dict, backend: str) -> tuple[list[str], list[str], list[str], list[str]]:
    """What a plain ``cpp_extension.load`` needs: (sources, include dirs, section cxx flags, section cuda flags).

    The ``[torch]`` binding sources plus every ``[kernel.*]`` section of ``backend`` (C++/CUDA files
    only; headers are found through the include dirs).
    """
    exts = (".cpp", ".cc", ".cxx", ".c") + ((".cu",) if backend == "cuda" else ())
    sources: list[str] = []
    includes: list[str] = []
    cxx_flags: list[str] = []
    cuda_flags: list[str] = []
    torch_section = build.get("torch") or {}
    sources += [str(folder / s) for s in torch_section.get("src", []) if s.endswith(exts)]
    includes += [str(folder / i) for i in torch_section.get("include", [])]
    for section in (build.get("kernel") or {}).values():
        if section.get("backend") != backend:
            continue
        sources += [str(folder / s) for s in section.get("src", []) if s.endswith(exts)]
        includes += [str(folder / i) for i in section.get("include", [])]
        cxx_flags += [f for f in section.get("cxx-flags", []) if f not in cxx_flags]
        cuda_flags += [f for f in section.get("cuda-flags", []) if f not in cuda_flags]
    includes.append(str(folder))
    return sources, list(dict.fromkeys(includes)), cxx_flags, cuda_flags


# -- a pinned Hub commit, served by jitkernels' FakeHub -----------------------------------------

def fake_hub(kernel_folder: Path, repo_id: str):
    """Start a FakeHub serving ``kernel_folder`` as ``repo_id@main``; returns (hub, endpoint, commit).

    Only the public FakeHub API is used: ``add_repo_from_dirs``, ``set_org``, ``start``, ``stop``.
    """
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from jitkernels.testing.hubserver import FakeHub  # stdlib only

    hub = FakeHub()
    sha = hub.add_repo_from_dirs(repo_id, {"main": kernel_folder})["main"]
    if hasattr(hub, "set_org"):
        hub.set_org(repo_id.split("/")[0], trusted=True)
    endpoint = hub.start()
    return hub, endpoint, sha


def populate_code(repo_id: str, sha: str | None, backend: str, log_info: bool = True) -> str:
    """Child source: cold-load ``repo_id@sha`` (None: unpinned) with jitkernels and report the module and its files."""
    return "\n".join([
        "import glob, json, logging, os, sys, time",
        "import torch",
        "if %r:" % log_info,
        "    _h = logging.StreamHandler(sys.stderr)",
        "    _h.setFormatter(logging.Formatter('%(name)s:%(levelname)s:%(message)s'))",
        "    logging.getLogger('jitkernels').addHandler(_h)",
        "    logging.getLogger('jitkernels').setLevel(logging.INFO)",
        "_t0 = time.perf_counter()",
        "import jitkernels",
        f"m = jitkernels.load('hf', {repo_id!r}, revision={sha!r}, backend={backend!r})" if sha else
        f"m = jitkernels.load('hf', {repo_id!r}, backend={backend!r})",
        "_t1 = time.perf_counter()",
        "pkg = os.path.dirname(m.__file__)",
        "R = {'ms': (_t1 - _t0) * 1e3, 'module': m.__name__, 'file': m.__file__, 'package_dir': pkg,",
        "     'libraries': sorted(glob.glob(os.path.join(pkg, '*.so')))}",
        f"print({RESULT_TAG!r} + json.dumps(R), flush=True)",
        "",
    ])


def copy_package(src: Path, dest: Path) -> None:
    """Copy a package folder without bytecode caches."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)


def upstream_variant(backend: str, torch_version: str, torch_cuda: str | None, stable: str | None,
                     cxx11_abi: bool = True) -> str:
    """The kernel-builder build-variant folder name for this machine (arch kernels only)."""
    if stable:
        major, minor = stable.split(".")[:2]
        framework = f"torch-stable-abi{major}{minor}"
    else:
        major, minor = torch_version.split("+")[0].split(".")[:2]
        framework = f"torch{major}{minor}-{'cxx11' if cxx11_abi else 'cxx98'}"
    if backend == "cuda":
        if not torch_cuda:
            raise SystemExit("backend cuda needs a CUDA build of torch")
        cmaj, cmin = torch_cuda.split(".")[:2]
        device = f"cu{cmaj}{cmin}"
    else:
        device = backend
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    system = {"linux": "linux", "darwin": "darwin"}.get(sys.platform, sys.platform)
    return f"{framework}-{device}-{machine}-{system}"


def write_upstream_metadata(variant_dir: Path, name: str, module_id: str, license_: str, backend: str,
                            python_depends: list[str] | None = None) -> None:
    """The metadata.json kernels>=0.17 requires in a build variant folder."""
    meta = {
        "name": name,
        "id": module_id,
        "version": 1,
        "license": license_,
        "python-depends": list(python_depends or []),
        "backend": {"type": backend},
    }
    (variant_dir / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")


def op_check_code(kernel: str, namespace: str | None, backend: str, namespace_expr: str | None = None) -> str:
    """Child source (after the timed region) checking the kernel's op against torch, if we know one.

    The op namespace is ``namespace`` or, evaluated in the child, the expression ``namespace_expr``
    (e.g. ``"mod.__name__"``). Always checks that ``torch.ops.<namespace>`` has registered ops.
    """
    dev = "cuda" if backend == "cuda" else "cpu"
    code = [
        f"NS = {namespace_expr if namespace_expr else repr(namespace)}",
        f"DEV = {dev!r}",
        "OPS = getattr(torch.ops, NS)",
        "_ops = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith(NS + '::')]",
        "assert _ops, 'no ops registered under ' + NS",
        "R['ops_registered'] = len(_ops)",
    ]
    if kernel in OP_CHECKS:
        code.append(OP_CHECKS[kernel])
        code.append("R['op_checked'] = True")
    return "\n".join(code)
