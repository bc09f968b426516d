"""Warm load of a native (compiled) kernel: JitKernels vs loading the library vs upstream ``kernels``.

Kernel: kernels-community ``relu`` on CPU by default; ``--gpu`` means ``--backend cuda --kernel activation``
(any ``--kernel``/``--backend`` may be given). The kernel is built once with JitKernels (cold: about
30-40 s for relu on 2 cores) into a temporary cache from a pinned commit served by a local FakeHub,
which is then stopped. Then, each in a fresh process, timed from just after ``import torch`` until
the kernel is ready:

* ``floor``      -- ``torch.ops.load_library(<the .so in the JitKernels cache entry>)``;
* ``jitkernels`` -- ``import jitkernels; jitkernels.load("hf", "kernels-community/relu", revision=<sha>,
  backend="cpu")``, ``HF_HUB_OFFLINE=1``, index warm (the ``import jitkernels`` is inside the clock);
* ``upstream``   -- ``kernels.get_local_kernel(Path(repo), backend=...)`` (kernels 0.17.2), offline, of the
  same built package (``__init__.py``, ``_ops.py``, the ``.so``, ``layers/``...) copied to
  ``<repo>/build/<variant>/`` (``torch213-cxx11-cpu-x86_64-linux`` here; ``torch-stable-abi210-cu130-...``
  for a stable-ABI CUDA kernel) with a ``metadata.json`` whose ``id`` is the extension name.

After the clock stops every child checks the op against torch (relu, activation's silu_and_mul).

Targets (issue): jitkernels <= 2 x floor + 2 ms (median); >= 50x faster than upstream.
Anchors: CPU (2 cores) floor 0.45 ms, upstream 190 ms; GPU (H100) floor 1.5 ms, upstream ~430 ms.

Run (CPU)::

    .venv/bin/python benchmarks/bench_native_warm.py --kc /work/ext/kc --repeats 15 --json /tmp/native_warm.json

Run (GPU machine, needs nvcc and a CUDA torch)::

    python benchmarks/bench_native_warm.py --gpu --kc PATH --json native_warm_gpu.json
    python benchmarks/bench_native_warm.py --backend cuda --kernel relu --kc PATH

``--importtime`` adds a ``python -X importtime`` breakdown of the jitkernels and upstream variants.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _common as C


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(parser, repeats=15, warmup=1)
    parser.add_argument("--gpu", action="store_true",
                        help="GPU mode: defaults become --backend cuda --kernel activation")
    parser.add_argument("--kernel", help="kernels-community kernel folder (default relu; activation with --gpu)")
    parser.add_argument("--backend", help="cpu or cuda (default cpu; cuda with --gpu)")
    parser.add_argument("--upstream-variant", help="build variant folder name for upstream (default: computed)")
    parser.add_argument("--importtime", action="store_true",
                        help="also run the jitkernels and upstream variants once under -X importtime")
    args = parser.parse_args(argv)
    args.backend = args.backend or ("cuda" if args.gpu else "cpu")
    args.kernel = args.kernel or ("activation" if args.gpu else "relu")

    folder = C.kernel_dir(args, args.kernel)
    build = C.read_build_toml(folder)
    name = build["general"]["name"]
    repo_id = (build["general"].get("hub") or {}).get("repo-id") or f"kernels-community/{name}"

    with C.Workdir(args, "jk-bench-nativewarm-") as work:
        log = print
        info = C.machine_info(args, work, args.backend)
        jk_cache, hf_home = work / "jkcache", work / "hf"
        hub, endpoint, sha = C.fake_hub(folder, repo_id)
        try:
            env = C.child_env(args, work, JITKERNELS_CACHE=jk_cache, HF_HOME=hf_home, HF_ENDPOINT=endpoint)
            log(f"building {repo_id}@{sha[:12]} for {args.backend} with jitkernels (cold) ...", file=sys.stderr)
            first = C.run_child(args, C.populate_code(repo_id, sha, args.backend), env, work, "populate")
            # an online unpinned load records the commit the default revision resolved to
            C.run_child(args, C.populate_code(repo_id, None, args.backend), env, work, "populate unpinned")
        finally:
            hub.stop()  # from here on, any Hub request would fail (connection refused)
        local_env = C.child_env(args, work, JITKERNELS_CACHE=jk_cache, HF_HOME=hf_home, HF_HUB_OFFLINE=1,
                                LOCAL_KERNELS=f"{repo_id}={folder}")
        log(f"building {repo_id} again from the local folder {folder} (LOCAL_KERNELS) ...", file=sys.stderr)
        C.run_child(args, C.populate_code(repo_id, None, args.backend), local_env, work, "populate local")
        ext = first["module"]
        libs = first["libraries"]
        if len(libs) != 1:
            sys.exit(f"expected one compiled library in {first['package_dir']}, found {libs}")
        so = libs[0]
        log(f"built {ext} in {first['ms'] / 1e3:.1f} s (incl. import jitkernels, Hub fetch): {so}", file=sys.stderr)

        # upstream layout: the built package as build/<variant>/, metadata.json id = extension name.
        variant_name = args.upstream_variant or C.upstream_variant(
            args.backend, info["torch"], info.get("torch_cuda"), C.stable_abi(build, args.backend))
        upstream_repo = work / "upstream" / name
        variant = upstream_repo / "build" / variant_name
        C.copy_package(Path(first["package_dir"]), variant)
        C.write_upstream_metadata(variant, name, ext, build["general"].get("license", "unknown"), args.backend,
                                  build["general"].get("python-depends", []))

        offline = C.child_env(args, work, JITKERNELS_CACHE=jk_cache, HF_HOME=hf_home, HF_HUB_OFFLINE=1,
                              HF_ENDPOINT=endpoint)
        check = C.op_check_code(args.kernel, ext, args.backend)
        variants = {
            "floor": (C.timed_child_code(f"torch.ops.load_library({so!r})", check), offline),
            "jitkernels": (C.timed_child_code(
                f"import jitkernels\nmod = jitkernels.load('hf', {repo_id!r}, revision={sha!r}, "
                f"backend={args.backend!r})", check + "\nR['module'] = mod.__name__"), offline),
            "jk-unpinned-offline": (C.timed_child_code(
                f"import jitkernels\nmod = jitkernels.load('hf', {repo_id!r}, backend={args.backend!r})",
                check + "\nR['module'] = mod.__name__"), offline),
            "jk-local": (C.timed_child_code(
                f"import jitkernels\nmod = jitkernels.load('hf', {repo_id!r}, backend={args.backend!r})",
                C.op_check_code(args.kernel, None, args.backend, namespace_expr="mod.__name__")
                + "\nR['module'] = mod.__name__"), local_env),
            "upstream": (C.timed_child_code(
                f"from pathlib import Path\nimport kernels\n"
                f"mod = kernels.get_local_kernel(Path({str(upstream_repo)!r}), backend={args.backend!r})",
                check + "\nR['module'] = mod.__name__"), offline),
        }
        samples, summary, reports = C.measure_warm(args, variants, work)

    floor, jk, up = (summary[k] for k in ("floor", "jitkernels", "upstream"))
    budget = 2 * floor["median"] + 2.0
    ratios = {
        "jitkernels_over_floor_median": jk["median"] / floor["median"],
        "jitkernels_over_floor_min": jk["min"] / floor["min"],
        "budget_ms_2xfloor_plus_2": budget,
        "jitkernels_minus_budget_ms_median": jk["median"] - budget,
        "upstream_over_jitkernels_median": up["median"] / jk["median"],
        "upstream_over_jitkernels_min": up["min"] / jk["min"],
    }
    for variant in ("jk-unpinned-offline", "jk-local"):
        ratios[f"{variant}_over_floor_median"] = summary[variant]["median"] / floor["median"]
    budget_unpinned = 2 * floor["median"] + 3.0
    targets = {
        "jitkernels <= 2 x floor + 2 ms (median)": jk["median"] <= budget,
        "unpinned offline <= 2 x floor + 3 ms (median)": summary["jk-unpinned-offline"]["median"] <= budget_unpinned,
        "local (LOCAL_KERNELS) <= 2 x floor + 3 ms (median)": summary["jk-local"]["median"] <= budget_unpinned,
        "upstream / jitkernels >= 50 (median)": ratios["upstream_over_jitkernels_median"] >= 50.0,
    }
    extra = {n: {"new_modules": samples[n][0]["new_modules"], "hf_hub_imported": samples[n][0]["hf_hub_imported"],
                 "cpp_extension_imported": samples[n][0]["cpp_extension_imported"],
                 "op_checked": samples[n][0].get("op_checked", False)} for n in samples}
    rows = [[n, C.fmt(s["median"]), C.fmt(s["min"]), C.fmt(s["max"]), str(s["n"]), str(extra[n]["new_modules"]),
             "yes" if extra[n]["hf_hub_imported"] else "no", "yes" if extra[n]["op_checked"] else "registered only"]
            for n, s in summary.items()]
    device = f", GPU {info.get('gpu')} (sm {info.get('gpu_capability')})" if info.get("gpu") else ""
    print(f"\n## Warm load of native `{repo_id}` ({args.backend}), after `import torch`\n")
    print(f"Machine: {info.get('cpu_model', '?')}, {info.get('cpus_usable')} usable cores{device}; Python "
          f"{info.get('python_version')}, torch {info.get('torch')}, kernels {info.get('kernels')}; "
          f"bytecode: {args.bytecode}; upstream variant `{variant_name}`; cold build {first['ms'] / 1e3:.1f} s\n")
    print(C.describe_code(info) + "\n")
    print(C.markdown_table(["variant", "median ms", "min ms", "max ms", "n", "modules imported",
                            "huggingface_hub imported", "op check"], rows))
    print()
    print(C.markdown_table(["ratio", "median", "min"], [
        ["jitkernels / floor", C.fmt(ratios["jitkernels_over_floor_median"], 1),
         C.fmt(ratios["jitkernels_over_floor_min"], 1)],
        ["budget 2 x floor + 2 ms", C.fmt(budget), ""],
        ["jitkernels - budget (ms)", C.fmt(ratios["jitkernels_minus_budget_ms_median"]), ""],
        ["upstream / jitkernels", C.fmt(ratios["upstream_over_jitkernels_median"], 1),
         C.fmt(ratios["upstream_over_jitkernels_min"], 1)],
    ]))
    print()
    print(C.markdown_table(["target", "result"], [[t, C.verdict(ok)] for t, ok in targets.items()]))
    for report in reports:
        print("\n" + report)
    C.write_json(args.json, {
        "benchmark": "native_warm", "kernel": repo_id, "commit": sha, "backend": args.backend,
        "extension": ext, "upstream_variant": variant_name, "cold_build_ms": first["ms"],
        "machine": info, "args": vars(args), "variants": summary, "diagnostics": extra,
        "ratios": ratios, "targets": targets,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
