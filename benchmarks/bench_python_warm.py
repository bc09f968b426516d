"""Warm load of a pure-Python kernel: JitKernels vs a plain import vs upstream ``kernels``.

Kernel: kernels-community ``einops`` (``[torch-noarch]``, pure Python) by default.

Variants, each timed in a fresh process from just after ``import torch`` until the
kernel module is ready:

* ``floor``     -- ``import einops`` of the package copied from ``torch-ext/`` into a folder on ``sys.path``;
* ``jitkernels`` -- ``import jitkernels; jitkernels.load("hf", "kernels-community/einops", revision=<sha>,
  backend="cpu")`` with ``HF_HUB_OFFLINE=1`` and the index warm (a pinned Hub commit loaded once
  before, from a local FakeHub that is stopped before measuring);
* ``upstream``  -- ``kernels.get_local_kernel(Path(repo), backend="cpu")`` (kernels 0.17.2), offline, of the
  same package laid out as ``<repo>/build/torch-cpu/`` with a ``metadata.json``.

Targets (issue): jitkernels <= floor + 3 ms (median), and >= 10x faster than upstream.
Anchors (2-core dev machine): floor 17.5 ms, upstream 290 ms.

Run::

    .venv/bin/python benchmarks/bench_python_warm.py --kc /work/ext/kc --repeats 15 --json /tmp/python_warm.json

(or ``JITKERNELS_KC=/work/ext/kc``). ``--importtime`` also prints where the time of the
jitkernels and upstream variants goes (``python -X importtime``). Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import hashlib
import sys

import _common as C


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser, repeats=15, warmup=1)
    parser.add_argument("--kernel", default="einops", help="a pure-Python kernels-community kernel (default einops)")
    parser.add_argument("--backend", default="cpu", help="backend passed to both loaders (default cpu)")
    parser.add_argument("--importtime", action="store_true",
                        help="also run the jitkernels and upstream variants once under -X importtime")
    args = parser.parse_args(argv)

    folder = C.kernel_dir(args, args.kernel)
    build = C.read_build_toml(folder)
    name = build["general"]["name"]
    pyname = C.python_name(build)
    repo_id = (build["general"].get("hub") or {}).get("repo-id") or f"kernels-community/{name}"
    package = folder / "torch-ext" / pyname
    if not (package / "__init__.py").is_file():
        sys.exit(f"{package}: no __init__.py (not a torch-ext Python package)")

    with C.Workdir(args, "jk-bench-pywarm-") as work:
        log = print
        # (a) the floor: the package in a folder on sys.path.
        floor_dir = work / "floor"
        C.copy_package(package, floor_dir / pyname)
        # (c) upstream layout: <repo>/build/torch-<backend>/ + metadata.json.
        upstream_repo = work / "upstream" / name
        variant = upstream_repo / "build" / f"torch-{args.backend}"
        C.copy_package(package, variant)
        module_id = f"_{pyname}_{args.backend}_{hashlib.sha1(str(work).encode()).hexdigest()[:7]}"
        C.write_upstream_metadata(variant, name, module_id, build["general"].get("license", "unknown"),
                                  args.backend, build["general"].get("python-depends", []))
        # (b) jitkernels: load the pinned commit once from a FakeHub, then go offline.
        jk_cache, hf_home = work / "jkcache", work / "hf"
        hub, endpoint, sha = C.fake_hub(folder, repo_id)
        try:
            env = C.child_env(args, work, JITKERNELS_CACHE=jk_cache, HF_HOME=hf_home, HF_ENDPOINT=endpoint)
            first = C.run_child(args, C.populate_code(repo_id, sha, args.backend), env, work, "populate")
            # an online unpinned load records the commit the default revision resolved to
            C.run_child(args, C.populate_code(repo_id, None, args.backend), env, work, "populate unpinned")
        finally:
            hub.stop()  # from here on, any Hub request would fail (connection refused)
        local_env = C.child_env(args, work, JITKERNELS_CACHE=jk_cache, HF_HOME=hf_home, HF_HUB_OFFLINE=1,
                                LOCAL_KERNELS=f"{repo_id}={folder}")
        C.run_child(args, C.populate_code(repo_id, None, args.backend), local_env, work, "populate local")
        log(f"populated {repo_id}@{sha[:12]} -> {first['module']} ({first['ms']:.0f} ms, cold)", file=sys.stderr)

        offline = C.child_env(args, work, JITKERNELS_CACHE=jk_cache, HF_HOME=hf_home, HF_HUB_OFFLINE=1,
                              HF_ENDPOINT=endpoint)
        check = ""
        if args.kernel == "einops":
            check = ("t = torch.arange(6).reshape(2, 3)\n"
                     "assert torch.equal(mod.rearrange(t, 'a b -> b a'), t.t()), 'einops.rearrange is wrong'\n")
        check += "R['module'] = mod.__name__\n"
        variants = {
            "floor": (C.timed_child_code(f"sys.path.insert(0, {str(floor_dir)!r})\nimport {pyname} as mod", check),
                      offline),
            "jitkernels": (C.timed_child_code(
                f"import jitkernels\nmod = jitkernels.load('hf', {repo_id!r}, revision={sha!r}, "
                f"backend={args.backend!r})", check), offline),
            "jk-unpinned-offline": (C.timed_child_code(
                f"import jitkernels\nmod = jitkernels.load('hf', {repo_id!r}, backend={args.backend!r})", check),
                offline),
            "jk-local": (C.timed_child_code(
                f"import jitkernels\nmod = jitkernels.load('hf', {repo_id!r}, backend={args.backend!r})", check),
                local_env),
            "upstream": (C.timed_child_code(
                f"from pathlib import Path\nimport kernels\n"
                f"mod = kernels.get_local_kernel(Path({str(upstream_repo)!r}), backend={args.backend!r})", check),
                offline),
        }
        info = C.machine_info(args, work, args.backend)
        samples, summary, reports = C.measure_warm(args, variants, work)

    floor, jk, up = (summary[k] for k in ("floor", "jitkernels", "upstream"))
    ratios = {
        "jitkernels_minus_floor_ms_median": jk["median"] - floor["median"],
        "jitkernels_minus_floor_ms_min": jk["min"] - floor["min"],
        "upstream_over_jitkernels_median": up["median"] / jk["median"],
        "upstream_over_jitkernels_min": up["min"] / jk["min"],
        "jitkernels_over_floor_median": jk["median"] / floor["median"],
    }
    for variant in ("jk-unpinned-offline", "jk-local"):
        ratios[f"{variant}_minus_floor_ms_median"] = summary[variant]["median"] - floor["median"]
    targets = {
        "jitkernels <= floor + 3 ms (median)": ratios["jitkernels_minus_floor_ms_median"] <= 3.0,
        "unpinned offline <= 2 x floor + 3 ms (median)":
            summary["jk-unpinned-offline"]["median"] <= 2 * floor["median"] + 3.0,
        "local (LOCAL_KERNELS) <= 2 x floor + 3 ms (median)": summary["jk-local"]["median"] <= 2 * floor["median"] + 3.0,
        "upstream / jitkernels >= 10 (median)": ratios["upstream_over_jitkernels_median"] >= 10.0,
    }
    extra = {name: {"new_modules": samples[name][0]["new_modules"],
                    "hf_hub_imported": samples[name][0]["hf_hub_imported"]} for name in samples}
    rows = [[n, C.fmt(s["median"]), C.fmt(s["min"]), C.fmt(s["max"]), str(s["n"]),
             str(extra[n]["new_modules"]), "yes" if extra[n]["hf_hub_imported"] else "no"]
            for n, s in summary.items()]
    print(f"\n## Warm load of pure-Python `{repo_id}` (backend {args.backend}), after `import torch`\n")
    print(f"Machine: {info.get('cpu_model', '?')}, {info.get('cpus_usable')} usable cores; Python "
          f"{info.get('python_version')}, torch {info.get('torch')}, kernels {info.get('kernels')}; "
          f"bytecode: {args.bytecode}\n")
    print(C.describe_code(info) + "\n")
    print(C.markdown_table(["variant", "median ms", "min ms", "max ms", "n", "modules imported",
                            "huggingface_hub imported"], rows))
    print()
    print(C.markdown_table(["ratio", "median", "min"], [
        ["jitkernels - floor (ms)", C.fmt(ratios["jitkernels_minus_floor_ms_median"]),
         C.fmt(ratios["jitkernels_minus_floor_ms_min"])],
        ["upstream / jitkernels", C.fmt(ratios["upstream_over_jitkernels_median"], 1),
         C.fmt(ratios["upstream_over_jitkernels_min"], 1)],
        ["jitkernels / floor", C.fmt(ratios["jitkernels_over_floor_median"]), ""],
    ]))
    print()
    print(C.markdown_table(["target", "result"], [[t, C.verdict(ok)] for t, ok in targets.items()]))
    for report in reports:
        print("\n" + report)
    C.write_json(args.json, {
        "benchmark": "python_warm", "kernel": repo_id, "commit": sha, "backend": args.backend,
        "machine": info, "args": {k: v for k, v in vars(args).items()}, "variants": summary,
        "diagnostics": extra, "ratios": ratios, "targets": targets,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
