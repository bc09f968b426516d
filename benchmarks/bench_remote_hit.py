"""Cold build vs a remote-cache hit: what a second machine of a fleet pays for a native kernel.

Two "machines" (two empty ``JITKERNELS_CACHE`` folders, fresh processes) share a remote
artifact cache (``file://`` folder; the same code serves ``s3://`` and ``hf://``):

* ``builder`` -- ``JITKERNELS_REMOTE_CACHE_MODE=write``: compiles the kernel (cold), publishes it
  locally and uploads it;
* ``fleet``   -- read mode, ``JITKERNELS_DISABLE_BUILD=1`` (a compile would be an error): downloads
  the entry, checks every file's sha256, publishes it, imports it.

The kernel comes from a local folder through ``LOCAL_KERNELS`` (default: kernels-community
``activation`` with ``--gpu``, else the bundled ``scaled-add`` on the CPU). Each process is timed
from start to a loaded module whose op was called. Run::

    python benchmarks/bench_remote_hit.py --gpu --kc /path/to/kernels-community --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

CODE = """
import torch, jitkernels
k = jitkernels.load("hf", {repo!r}, backend={backend!r})
print("MODULE", k.__name__)
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="CUDA: kernels-community activation")
    parser.add_argument("--kc", default=os.environ.get("JITKERNELS_KC"))
    parser.add_argument("--kernel", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    backend = "cuda" if args.gpu else "cpu"
    kernel = args.kernel or ("activation" if args.gpu else None)
    folder = Path(args.kc) / kernel if kernel else C.REPO_ROOT / "jitkernels/examples/kernels/scaled-add"
    repo = f"kernels-community/{folder.name}"
    rows = []
    for round_ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="jk-bench-remote-") as tmp:
            work = Path(tmp)
            base = dict(os.environ, PYTHONPATH=os.pathsep.join([str(C.REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
                        LOCAL_KERNELS=f"{repo}={folder}", JITKERNELS_REMOTE_CACHE=f"file://{work / 'remote'}",
                        PYTHONPYCACHEPREFIX=str(work / "pycache"))
            times = {}
            for machine, extra in (("builder", {"JITKERNELS_REMOTE_CACHE_MODE": "write"}),
                                   ("fleet", {"JITKERNELS_DISABLE_BUILD": "1"})):
                env = dict(base, JITKERNELS_CACHE=str(work / machine), **extra)
                start = time.perf_counter()
                out = subprocess.run([sys.executable, "-c", CODE.format(repo=repo, backend=backend)], env=env,
                                     capture_output=True, text=True, timeout=1800)
                times[machine] = time.perf_counter() - start
                if out.returncode != 0:
                    sys.exit(f"{machine} failed:\n{out.stderr[-3000:]}")
                times[machine + "_compiled"] = (work / machine / "builds").exists()
            rows.append(times)
            print(f"round {round_ + 1}: builder (cold build + upload) {times['builder']:.1f} s, "
                  f"fleet (remote hit) {times['fleet']:.2f} s, fleet compiled: {times['fleet_compiled']}",
                  file=sys.stderr)
    cold = statistics.median(r["builder"] for r in rows)
    hit = statistics.median(r["fleet"] for r in rows)
    print(f"\n## Cold build vs remote hit: `{repo}` ({backend})\n")
    print("| machine | median seconds (process start to loaded module) | compiled |\n| --- | --- | --- |")
    print(f"| builder: cold build, upload | {cold:.2f} | yes |")
    print(f"| fleet: remote hit (JITKERNELS_DISABLE_BUILD=1) | {hit:.2f} | "
          f"{'yes' if any(r['fleet_compiled'] for r in rows) else 'no'} |")
    print(f"\ncold / remote hit: {cold / hit:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"kernel": repo, "backend": backend, "rounds": rows,
                                               "cold_s_median": cold, "hit_s_median": hit}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
