"""The ``jitkernels`` command: ``inspect``, ``warmup``, ``lock``, ``verify``, ``demo``, ``cache``.

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


def cmd_cache(args) -> int:
    from . import config

    print(config.cache_dir())
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

    p = sub.add_parser("cache", help="print the cache folder")
    p.set_defaults(func=cmd_cache)
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
