"""What the ``jitkernels.hub`` finder costs imports that are not kernels.

Imports a few hundred stdlib modules in fresh subprocesses, with and without
the finder on ``sys.meta_path`` (both runs have ``jitkernels.hub`` imported,
so only the finder differs), alternating the two modes, and prints a table:
median / min time per run and the ratio. Also prints the cost of one
``HubFinder.find_spec`` call for a name it does not claim. No assertions:
the issue asks for "within noise", which the min/median columns show.

    python benchmarks/bench_import_hook.py [--runs 15] [--max-modules 400]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SKIP = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "pydoc_data", "lib2to3", "ensurepip",
    "venv", "idle", "msilib", "winreg", "winsound", "_msi", "nt", "msvcrt", "_winapi", "_overlapped", "__phello__",
}

CHILD = r"""
import sys, time, json
mode, names = sys.argv[1], json.loads(sys.argv[2])
import jitkernels.hub
from jitkernels.hub import HubFinder
if mode == "without":
    jitkernels.hub.uninstall()
assert (HubFinder in sys.meta_path) == (mode == "with")
t0 = time.perf_counter()
for name in names:
    __import__(name)
print(time.perf_counter() - t0)
"""


def importable_stdlib(limit: int) -> list[str]:
    candidates = sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in SKIP)
    probe = (
        "import sys, json, importlib, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "ok = []\n"
        "for n in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        importlib.import_module(n); ok.append(n)\n"
        "    except BaseException:\n"
        "        pass\n"
        "print(json.dumps(ok))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, json.dumps(candidates)], capture_output=True, text=True,
                         check=True, env=_env())
    return json.loads(out.stdout.strip().splitlines()[-1])[:limit]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "0"
    return env


def run(mode: str, names: list[str]) -> float:
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD, mode, json.dumps(names)],
                         capture_output=True, text=True, check=True, env=_env())
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--max-modules", type=int, default=400)
    args = parser.parse_args()

    names = importable_stdlib(args.max_modules)
    for mode in ("without", "with"):  # warm the bytecode caches once
        run(mode, names)
    times: dict[str, list[float]] = {"without": [], "with": []}
    for i in range(args.runs):
        for mode in (("without", "with") if i % 2 == 0 else ("with", "without")):
            times[mode].append(run(mode, names))

    sys.path.insert(0, str(ROOT))
    from jitkernels.hub import HubFinder

    n = 200_000
    per_call = timeit.timeit(lambda: HubFinder.find_spec("json.decoder"), number=n) / n

    print(f"stdlib modules imported per run: {len(names)}   runs per mode: {args.runs}   python {sys.version.split()[0]}")
    print(f"{'mode':<16}{'median ms':>12}{'min ms':>12}{'stdev ms':>12}")
    for mode in ("without", "with"):
        t = times[mode]
        print(f"{mode + ' finder':<16}{statistics.median(t) * 1e3:>12.2f}{min(t) * 1e3:>12.2f}"
              f"{statistics.stdev(t) * 1e3:>12.2f}")
    ratio_med = statistics.median(times["with"]) / statistics.median(times["without"])
    ratio_min = min(times["with"]) / min(times["without"])
    print(f"{'ratio with/without':<16}{ratio_med:>12.3f}{ratio_min:>12.3f}")
    print(f"HubFinder.find_spec for a non-hub name: {per_call * 1e9:.0f} ns/call "
          f"(x {len(names)} top-level imports ~ {per_call * len(names) * 1e6:.1f} us/run, excluding submodules)")


if __name__ == "__main__":
    main()
