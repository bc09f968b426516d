"""The ``jitkernels`` command: ``inspect``, ``warmup``, ``build``, ``export``, ``lock``, ``verify``, ``demo``,
``cache [list|info|prune|clear]``.

Exit status 0 on success; 1 with one clear ``error:`` line on a JitKernels
error; 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .errors import JitKernelsError

_FIELDS = [
    "strategy", "reason", "backend", "repo_id", "revision", "requested_revision", "source",
    "source_location", "python_name", "module_name", "expected_extension_name", "dependencies",
    "unsupported_dependencies", "python_depends", "kernel_depends", "kernels", "stable_abi", "edition", "detail",
]


def _add_target_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--provider", default="hf_kernels", help="kernel provider (hf_kernels, hf, hf-kernels)")
    parser.add_argument("--backend", default=None, help="plan for this backend (cpu, cuda...); default: this machine's")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--revision", default=None, help="branch, tag or commit")
    group.add_argument("--version", type=int, default=None, help="newest commit of branch vN")


def _table(inspection) -> str:
    data = inspection.to_dict()
    width = max(len(k) for k in _FIELDS)
    lines = []
    for key in _FIELDS:
        value = data.get(key)
        if isinstance(value, list):
            value = ", ".join(value) if value else "-"
        lines.append(f"{key:<{width}}  {value if value not in (None, '') else '-'}")
    lines += _input_lines(data.get("inputs") or [], width)
    return "\n".join(lines)


def _input_lines(inputs: list[dict], width: int) -> list[str]:
    """``inputs`` one per line: name, kind, version, where from, status (and where / what to do)."""
    lines = []
    for index, item in enumerate(inputs):
        where = item.get("location") or ""
        text = (f"{item['name']} ({item['kind']} {item.get('version') or '-'}): "
                f"{item.get('origin') or '-'}, {item['status']}" + (f", {where}" if where else ""))
        if item["status"] in ("missing", "unsupported") and item.get("detail"):
            text += f" ({item['detail']})"
        lines.append(f"{'inputs' if index == 0 else '':<{width}}  {text}")
    return lines or [f"{'inputs':<{width}}  -"]


def cmd_inspect(args) -> int:
    import jitkernels

    results = []
    for name in args.names:
        if args.local:
            results.append(jitkernels.inspect_local(name, backend=args.backend))
        else:
            results.append(jitkernels.inspect(args.provider, name, revision=args.revision,
                                              version=args.version, backend=args.backend))
    if args.json:
        payload = [r.to_dict() for r in results]
        print(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2, sort_keys=True))
    else:
        print("\n\n".join(_table(r) for r in results))
    return 0


def cmd_warmup(args) -> int:
    from .pipeline import load_kernel

    failures = 0
    total = len(args.names)
    for index, name in enumerate(args.names, 1):
        start = time.monotonic()
        print(f"[{index}/{total}] {name}: preparing ...", file=sys.stderr, flush=True)
        try:
            module = load_kernel(args.provider, name, revision=args.revision, version=args.version,
                                 backend=args.backend)
        except JitKernelsError as exc:
            failures += 1
            print(f"[{index}/{total}] {name}: FAILED: {exc}", file=sys.stderr, flush=True)
            continue
        print(f"[{index}/{total}] {name}: ready in {time.monotonic() - start:.1f}s ({module.__name__})",
              file=sys.stderr, flush=True)
    if failures:
        print(f"error: {failures} of {total} kernels failed to warm up", file=sys.stderr)
        return 1
    return 0


def cmd_lock(args) -> int:
    from .lockfile import write_lock
    from .pipeline import lock_entry

    entries = []
    for index, name in enumerate(args.names, 1):
        entry = lock_entry(args.provider, name, revision=args.revision, version=args.version, backend=args.backend)
        print(f"[{index}/{len(args.names)}] {entry['dependency']['repo-id']}: {entry['lock']['commit'][:12]}, "
              f"{len(entry['jitkernels']['files'])} files", file=sys.stderr)
        entries.append(entry)
    write_lock(args.output, entries)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cmd_verify(args) -> int:
    """Re-hash every published entry (the full check; loads only compare sizes)."""
    from . import config
    from .warm import check_entry

    entries = config.cache_dir() / "entries"
    damaged = 0
    names = sorted(p for p in entries.iterdir() if p.is_dir()) if entries.is_dir() else []
    for entry in names:
        problem = check_entry(entry, full=True)
        if problem:
            damaged += 1
            print(f"DAMAGED {entry.name}: {problem}", file=sys.stderr)
    print(f"{len(names) - damaged} of {len(names)} cache entries intact", file=sys.stderr)
    if damaged:
        print(f"error: {damaged} damaged entries; they are rebuilt on their next load", file=sys.stderr)
        return 1
    return 0


def _normalise_archs(values: list[str]) -> list[str]:
    """``--arch 9.0a --arch 8.0,8.9`` -> GPU capabilities (``9.0``, ``8.0``, ``8.9``).

    An ``a``/``f`` suffix names the same GPU: as on that GPU, the arch-specific
    code is built where the kernel declares it, so the entry gets the build key a
    machine with that GPU computes (and finds it in a shared cache).
    """
    import re

    archs = []
    for value in values:
        for arch in (a for a in re.split(r"[;,\s]+", value) if a):
            match = re.fullmatch(r"(\d+\.\d+)([af]?)(\+PTX)?", arch)
            if not match:
                raise ValueError(f"--arch {arch!r} is not a CUDA capability such as 9.0, 9.0a or 8.0+PTX")
            archs.append(match.group(1) + (match.group(3) or ""))
    return list(dict.fromkeys(archs))


def cmd_build(args) -> int:
    """Compile kernels into the cache without importing them (no GPU needed with --arch)."""
    import os

    from .prebuild import prepare_kernel, prepare_local

    if args.arch and args.backend != "cuda":
        print("error: --arch needs --backend cuda", file=sys.stderr)
        return 2
    try:
        archs = _normalise_archs(args.arch or [])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    saved = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if archs:
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)
    failures = 0
    total = len(args.names)
    try:
        for index, name in enumerate(args.names, 1):
            start = time.monotonic()
            try:
                if args.local:
                    prepared = prepare_local(name, backend=args.backend)
                else:
                    prepared = prepare_kernel(args.provider, name, revision=args.revision, version=args.version,
                                              backend=args.backend, trust_remote_code=args.trust_remote_code)
            except JitKernelsError as exc:
                failures += 1
                print(f"[{index}/{total}] {name}: FAILED: {exc}", file=sys.stderr, flush=True)
                continue
            i = prepared.inspection
            print(f"[{index}/{total}] {name}: {i.backend}{' ' + ','.join(archs) if archs else ''} "
                  f"ready in {time.monotonic() - start:.1f}s: {prepared.entry}", file=sys.stderr, flush=True)
    finally:
        if archs:
            if saved is None:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = saved
    if failures:
        print(f"error: {failures} of {total} kernels failed to build", file=sys.stderr)
        return 1
    return 0


def cmd_export(args) -> int:
    """Write a kernel's built entry in upstream's build/<variant>/ layout (building it if needed)."""
    from .export import export_entry, publish_hint
    from .prebuild import prepare_kernel, prepare_local

    if args.local:
        prepared = prepare_local(args.name, backend=args.backend)
    else:
        prepared = prepare_kernel(args.provider, args.name, revision=args.revision, version=args.version,
                                  backend=args.backend, trust_remote_code=args.trust_remote_code)
    folder = export_entry(prepared, args.to)
    print(folder)
    repo = prepared.inspection.repo_id if not args.local else None
    print(f"publish with: {publish_hint(folder, repo)}", file=sys.stderr)
    return 0


def cmd_cache(args) -> int:
    from . import cache_admin, config

    action = getattr(args, "action", None)
    if action is None:
        print(config.cache_dir())
        return 0
    if action == "list":
        infos = cache_admin.list_entries()
    elif action == "info":
        infos = cache_admin.find(args.name)
        if not infos:
            from .errors import CacheError

            raise CacheError(f"No cache entry named {args.name!r} in {config.cache_dir()} "
                             f"(`jitkernels cache list` shows them).")
    else:
        if action == "prune" and args.older_than is None and not args.unloadable and not args.damaged:
            print("error: say what to prune: --older-than DAYS, --unloadable or --damaged", file=sys.stderr)
            return 2
        if action == "clear" and not (args.yes or args.dry_run):
            print("error: clearing removes every entry; pass --yes (or --dry-run)", file=sys.stderr)
            return 2
        removed, busy = (cache_admin.prune(args.older_than, args.unloadable, args.damaged, args.dry_run)
                         if action == "prune" else cache_admin.clear(args.dry_run))
        if args.json:
            print(json.dumps({"removed": [e.to_dict() for e in removed], "in_use": [e.to_dict() for e in busy],
                              "dry_run": args.dry_run}, indent=2, sort_keys=True))
        else:
            verb = "would remove" if args.dry_run else "removed"
            for e in removed:
                print(f"{verb} {e.name} ({e.kernel or '-'}, {cache_admin.human_size(e.size)})")
            for e in busy:
                print(f"kept {e.name}: in use by another process", file=sys.stderr)
            print(f"{verb} {len(removed)} entries, {cache_admin.human_size(sum(e.size for e in removed))}")
        return 0
    if args.json:
        print(json.dumps([e.to_dict() for e in infos], indent=2, sort_keys=True))
    elif action == "info":
        for e in infos:
            print("\n".join(f"{k:<9} {v}" for k, v in e.to_dict().items()) + "\n")
    else:
        cache_admin.print_table(infos)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(native=not args.no_native)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jitkernels", description="JIT-first loader for Hugging Face Hub kernels.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="show what JitKernels would do with kernels (no binary download, no build)")
    p.add_argument("names", nargs="+", help="kernel names: 'activation', 'org/name' (or folders with --local)")
    _add_target_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--local", action="store_true", help="the names are local kernel folders")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("warmup", help="fetch and prepare (compile) kernels ahead of use")
    p.add_argument("names", nargs="+")
    _add_target_args(p)
    p.set_defaults(func=cmd_warmup)

    p = sub.add_parser("lock", help="pin kernels to commits and record the sha256 of every source file")
    p.add_argument("names", nargs="+")
    _add_target_args(p)
    p.add_argument("-o", "--output", default="jitkernels.lock", help="lock file to write (jitkernels.lock)")
    p.set_defaults(func=cmd_lock)

    p = sub.add_parser("demo", help="load a bundled example kernel through a local Hub and run it")
    p.add_argument("--no-native", action="store_true", help="skip compiling the example native kernel")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("verify", help="re-hash every cache entry (loads only compare file sizes)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("build", help="compile kernels into the cache without loading them (CUDA: no GPU needed)")
    p.add_argument("names", nargs="+", help="kernel names (or folders with --local)")
    _add_target_args(p)
    p.add_argument("--arch", action="append", metavar="CAP",
                   help="CUDA capability to compile for (9.0, 9.0a, 8.0+PTX; repeat or comma-separate); "
                        "sets TORCH_CUDA_ARCH_LIST for this build")
    p.add_argument("--local", action="store_true", help="the names are local kernel folders")
    p.add_argument("--trust-remote-code", action="store_true", help="build kernels of untrusted publishers")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("export", help="write a built kernel as upstream's build/<variant>/ (for kernels.get_kernel)")
    p.add_argument("name", help="kernel name (or a folder with --local)")
    p.add_argument("--to", required=True, help="folder to write build/<variant>/ into (upload it with `hf upload`)")
    _add_target_args(p)
    p.add_argument("--local", action="store_true", help="the name is a local kernel folder")
    p.add_argument("--trust-remote-code", action="store_true", help="export kernels of untrusted publishers")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("cache", help="print the cache folder, or list, inspect, prune or clear its entries")
    p.set_defaults(func=cmd_cache, action=None)
    actions = p.add_subparsers(dest="action")
    q = actions.add_parser("list", help="every entry: kernel, revision, backend, archs, ABI, size, last use")
    q.add_argument("--json", action="store_true", help="print JSON")
    q = actions.add_parser("info", help="the entries of one kernel (or one entry folder name)")
    q.add_argument("name")
    q.add_argument("--json", action="store_true", help="print JSON")
    q = actions.add_parser("prune", help="remove entries not used lately, not loadable here, or damaged")
    q.add_argument("--older-than", type=float, metavar="DAYS", help="not used for DAYS days")
    q.add_argument("--unloadable", action="store_true", help="native entries for another Python ABI or torch build")
    q.add_argument("--damaged", action="store_true", help="entries that fail the integrity check")
    q.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    q.add_argument("--json", action="store_true", help="print JSON")
    q = actions.add_parser("clear", help="remove every entry not in use, the indexes, memos and logs")
    q.add_argument("--yes", action="store_true", help="really clear")
    q.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    q.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except JitKernelsError as exc:
        # One clear line; a compile error keeps its compiler output below it.
        first, _, rest = str(exc).strip().partition("\n")
        print(f"error: {first}", file=sys.stderr)
        if rest:
            print(rest, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
