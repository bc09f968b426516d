"""The edit-rebuild-load loop of a local native kernel against a full cold build.

Kernel: a local copy of a kernel folder (default: the bundled ``scaled-add`` example,
CPU; ``--kc PATH --kernel relu`` for a kernels-community kernel). Each round, in fresh
processes with one empty cache:

* ``cold``        -- ``jitkernels.load_local(folder)``: every unit compiled, linked, published;
* ``edit-one``    -- one ``.cpp`` of a ``[kernel.*]`` section gets a new line, then ``load_local``
  again: ninja recompiles that unit only (the build workspace keeps the others), relinks,
  and the new entry (keyed by the new sources) is published and imported;
* ``unchanged``   -- ``load_local`` once more: the stat-checked memo, no planning, no hashing.

Compiles are counted with a ``CXX`` wrapper. Run::

    .venv/bin/python benchmarks/bench_incremental.py --repeats 3 --json /tmp/incremental.json

Nothing here asserts on time; the ratio cold / edit-one is the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

LOAD = """
import time, torch
t0 = time.perf_counter()
import jitkernels
k = jitkernels.load_local({path!r}, backend="cpu")
print("MS", (time.perf_counter() - t0) * 1e3, k.__name__)
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kc", default=os.environ.get("JITKERNELS_KC"), help="kernels-community checkout")
    parser.add_argument("--kernel", default=None, help="kernel folder in --kc (default: bundled scaled-add)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    source = (Path(args.kc) / args.kernel) if args.kernel else C.REPO_ROOT / "jitkernels/examples/kernels/scaled-add"
    real_cxx = shutil.which(os.environ.get("CXX", "c++"))
    rows = []
    for round_ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="jk-bench-incr-") as tmp:
            work = Path(tmp)
            folder = work / source.name
            shutil.copytree(source, folder)
            log = work / "compiles.log"
            wrapper = work / "cxx"
            wrapper.write_text(f'#!/bin/sh\ncase " $* " in *" -c "*) echo c >> {log} ;; esac\nexec {real_cxx} "$@"\n')
            wrapper.chmod(0o755)
            env = dict(os.environ, JITKERNELS_CACHE=str(work / "jkcache"), CXX=str(wrapper),
                       PYTHONPATH=str(C.REPO_ROOT), PYTHONPYCACHEPREFIX=str(work / "pycache"))
            env.pop("PYTHONDONTWRITEBYTECODE", None)

            def load(what: str) -> dict:
                log.write_text("")
                start = time.perf_counter()
                out = subprocess.run([sys.executable, "-c", LOAD.format(path=str(folder))], env=env,
                                     capture_output=True, text=True, timeout=1800)
                wall = (time.perf_counter() - start) * 1e3
                if out.returncode != 0:
                    sys.exit(f"{what} failed:\n{out.stderr[-3000:]}")
                line = next(l for l in out.stdout.splitlines() if l.startswith("MS "))
                return {"what": what, "ms_in_process": float(line.split()[1]), "wall_ms": wall,
                        "compiles": len(log.read_text().split())}

            cold = load("cold")
            unit = next(p for p in sorted(folder.rglob("*.cpp")) if "torch-ext" not in p.parts)
            unit.write_text(unit.read_text() + f"\n// edit {round_}\n")
            edit = load("edit-one")
            same = load("unchanged")
            rows.append({"round": round_ + 1, "cold": cold, "edit_one": edit, "unchanged": same, "edited": str(unit.name)})
            print(f"round {round_ + 1}: cold {cold['wall_ms'] / 1e3:.1f} s ({cold['compiles']} compiles), "
                  f"edit-one {edit['wall_ms'] / 1e3:.1f} s ({edit['compiles']} compiles), "
                  f"unchanged {same['ms_in_process']:.1f} ms ({same['compiles']} compiles)", file=sys.stderr)
    med = lambda key, field: statistics.median(r[key][field] for r in rows)  # noqa: E731
    summary = {
        "kernel": str(source), "rounds": len(rows),
        "cold_wall_ms_median": med("cold", "wall_ms"), "edit_one_wall_ms_median": med("edit_one", "wall_ms"),
        "unchanged_in_process_ms_median": med("unchanged", "ms_in_process"),
        "cold_over_edit_one": med("cold", "wall_ms") / med("edit_one", "wall_ms"),
        "compiles": {k: rows[0][k]["compiles"] for k in ("cold", "edit_one", "unchanged")},
    }
    print(f"\n## Edit-rebuild-load of local `{source.name}` (CPU, {os.cpu_count()} cores)\n")
    print("| step | median | compiles |\n| --- | --- | --- |")
    print(f"| cold build + load (new process) | {summary['cold_wall_ms_median'] / 1e3:.1f} s | {summary['compiles']['cold']} |")
    print(f"| edit one unit, rebuild + load (new process) | {summary['edit_one_wall_ms_median'] / 1e3:.1f} s | "
          f"{summary['compiles']['edit_one']} |")
    print(f"| unchanged, load (in process, after import torch) | {summary['unchanged_in_process_ms_median']:.1f} ms | "
          f"{summary['compiles']['unchanged']} |")
    print(f"\ncold / edit-one: {summary['cold_over_edit_one']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rounds": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
