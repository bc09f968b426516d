"""The ``jitkernels`` command: ``inspect``, ``warmup``, ``build``, ``export``, ``lock``, ``verify``, ``doctor``,
``test``, ``demo``, ``cache [list|info|prune|clear]``.

Every command takes ``--json``: its result is then one JSON document on
stdout, and an error is a JSON object too (``{"error": {"type", "message",
...}}``, also for usage errors). Exit status: 0 on success; 1 on a
JitKernels error (or, for ``warmup``/``verify``/``doctor NAME``, when
something failed); 2 for bad usage; 130 when interrupted.

Each command is one ``_add_<name>`` function (its arguments) next to its
``cmd_<name>`` function (what it does).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

from ..errors import JitKernelsError
from . import tables

# -- shared --------------------------------------------------------------------------------------

def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document (errors too)")


def _add_target_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--provider", default="hf_kernels", help="kernel provider (hf_kernels, hf, hf-kernels)")
    parser.add_argument("--backend", default=None, help="plan for this backend (cpu, cuda...); default: this machine's")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--revision", default=None, help="branch, tag or commit")
    group.add_argument("--version", type=int, default=None, help="newest commit of branch vN")


def _print_json(payload) -> None:
    print(json.dumps(payload, indent=2, sort_keys=True, default=str))


def _say(text: str) -> None:
    """A human line about progress or outcome: stderr, so stdout stays the command's result."""
    print(text, file=sys.stderr, flush=True)


def _usage_error(args, message: str) -> int:
    """A usage problem found after parsing: exit status 2, as a JSON object with ``--json``."""
    if getattr(args, "json", False):
        _print_json({"error": {"type": "UsageError", "message": message, "exit_code": 2}})
    else:
        print(f"error: {message}", file=sys.stderr)
    return 2


def _error_payload(exc: BaseException, code: int) -> dict:
    from ..errors import error_record

    return {"error": {**error_record(exc), "exit_code": code}}


# -- inspect ---------------------------------------------------------------------------------------

def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="show what JitKernels would do with kernels (no binary download, no build)")
    p.add_argument("names", nargs="+", help="kernel names: 'activation', 'org/name' (or folders with --local)")
    _add_target_args(p)
    _add_json(p)
    p.add_argument("--local", action="store_true", help="the names are local kernel folders")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="also fetch a source an untrusted publisher names outside the Hub (metadata.json 'source')")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args) -> int:
    import jitkernels

    results = []
    for name in args.names:
        if args.local:
            results.append(jitkernels.inspect_local(name, backend=args.backend))
        else:
            results.append(jitkernels.inspect(args.provider, name, revision=args.revision,
                                              version=args.version, backend=args.backend,
                                              trust_remote_code=args.trust_remote_code))
    if args.json:
        payload = [r.to_dict() for r in results]
        _print_json(payload[0] if len(payload) == 1 else payload)
    else:
        print("\n\n".join(tables.inspection(r) for r in results))
    return 0


# -- warmup ----------------------------------------------------------------------------------------

def _add_warmup(sub) -> None:
    p = sub.add_parser("warmup", help="fetch and prepare (compile) kernels ahead of use, several at once")
    p.add_argument("names", nargs="*", help="kernel names (or none, with --from)")
    p.add_argument("--from", dest="from_file", default=None, metavar="FILE",
                   help="kernels.lock (upstream), jitkernels.lock, a list (one `name[@revision]` per line), or a "
                        "project folder (`.`: its kernels.lock, else pyproject.toml [tool.kernels.dependencies])")
    p.add_argument("-j", "--jobs", type=int, default=None,
                   help="kernels prepared at once (default: up to 4); each build also uses MAX_JOBS compilers")
    _add_target_args(p)
    _add_json(p)
    p.set_defaults(func=cmd_warmup)


def cmd_warmup(args) -> int:
    from .. import batch
    from ..errors import InvalidKernelNameError

    targets = [batch.Target(n, revision=args.revision, version=args.version, backend=args.backend)
               for n in args.names]
    if args.from_file:
        targets += batch.read_targets(args.from_file, backend=args.backend)
    if not targets:
        raise InvalidKernelNameError("warmup: name kernels, or give a file with --from.")
    if args.jobs is not None and args.jobs < 1:
        raise InvalidKernelNameError(f"warmup --jobs must be at least 1 (got {args.jobs}).")
    outcomes = batch.run(args.provider, targets, jobs=args.jobs)
    failed = [o for o in outcomes if not o.ok]
    if args.json:
        _print_json({"ok": not failed, "kernels": [o.to_dict() for o in outcomes], "failed": len(failed)})
    else:
        for o in outcomes:
            state = f"ready in {o.seconds:.1f}s ({o.module})" if o.ok else "FAILED"
            _say(f"{o.target.label()}: {state}")
        if failed:
            _say(f"error: {len(failed)} of {len(outcomes)} kernels failed to warm up:")
            for o in failed:
                first = o.error["message"].splitlines()[0] if o.error["message"] else ""
                _say(f"  {o.target.label()}: {o.error['type']}: {first}")
    return 1 if failed else 0


# -- build ---------------------------------------------------------------------------------------

def _add_build(sub) -> None:
    p = sub.add_parser("build", help="compile kernels into the cache without loading them (CUDA: no GPU needed)")
    p.add_argument("names", nargs="+", help="kernel names (or folders with --local)")
    _add_target_args(p)
    p.add_argument("--arch", action="append", metavar="CAP",
                   help="CUDA capability to compile for (9.0, 9.0a, 8.0+PTX; repeat or comma-separate); "
                        "sets TORCH_CUDA_ARCH_LIST for this build")
    p.add_argument("--local", action="store_true", help="the names are local kernel folders")
    p.add_argument("--trust-remote-code", action="store_true", help="build kernels of untrusted publishers")
    _add_json(p)
    p.set_defaults(func=cmd_build)


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

    from ..errors import error_record
    from ..pipeline import prepare_kernel, prepare_local

    if args.arch and args.backend != "cuda":
        return _usage_error(args, "--arch needs --backend cuda")
    try:
        archs = _normalise_archs(args.arch or [])
    except ValueError as exc:
        return _usage_error(args, str(exc))
    saved = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if archs:
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)
    results = []
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
                results.append({"name": name, "ok": False, "error": error_record(exc)})
                if not args.json:
                    _say(f"[{index}/{total}] {name}: FAILED: {exc}")
                continue
            i = prepared.inspection
            seconds = time.monotonic() - start
            results.append({"name": name, "ok": True, "backend": i.backend, "archs": archs,
                            "entry": str(prepared.entry), "seconds": round(seconds, 3)})
            if not args.json:
                _say(f"[{index}/{total}] {name}: {i.backend}{' ' + ','.join(archs) if archs else ''} "
                     f"ready in {seconds:.1f}s: {prepared.entry}")
    finally:
        if archs:
            if saved is None:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = saved
    failures = sum(not r["ok"] for r in results)
    if args.json:
        _print_json({"ok": not failures, "kernels": results, "failed": failures})
    elif failures:
        _say(f"error: {failures} of {total} kernels failed to build")
    return 1 if failures else 0


# -- export ----------------------------------------------------------------------------------------

def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a built kernel as upstream's build/<variant>/ (for kernels.get_kernel)")
    p.add_argument("name", help="kernel name (or a folder with --local)")
    p.add_argument("--to", required=True, help="folder to write build/<variant>/ into (upload it with `hf upload`)")
    _add_target_args(p)
    p.add_argument("--local", action="store_true", help="the name is a local kernel folder")
    p.add_argument("--trust-remote-code", action="store_true", help="export kernels of untrusted publishers")
    _add_json(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    """Write a kernel's built entry in upstream's build/<variant>/ layout (building it if needed)."""
    from ..pipeline import prepare_kernel, prepare_local
    from ..upstream.export import export_entry, publish_hint

    if args.local:
        prepared = prepare_local(args.name, backend=args.backend)
    else:
        prepared = prepare_kernel(args.provider, args.name, revision=args.revision, version=args.version,
                                  backend=args.backend, trust_remote_code=args.trust_remote_code)
    folder = export_entry(prepared, args.to)
    repo = prepared.inspection.repo_id if not args.local else None
    if args.json:
        _print_json({"folder": str(folder), "publish": publish_hint(folder, repo)})
    else:
        print(folder)
        _say(f"publish with: {publish_hint(folder, repo)}")
    return 0


# -- lock ------------------------------------------------------------------------------------------

def _add_lock(sub) -> None:
    p = sub.add_parser("lock", help="pin kernels to commits and record the sha256 of every source file")
    p.add_argument("names", nargs="+", help="kernel names, or a project folder (`.`): its pyproject.toml "
                                            "[tool.kernels.dependencies], as `kernels lock` reads it")
    _add_target_args(p)
    p.add_argument("-o", "--output", default=None,
                   help="lock file to write (default: jitkernels.lock; for one project folder, in that folder)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="lock kernels whose source an untrusted publisher names outside the Hub")
    _add_json(p)
    p.set_defaults(func=cmd_lock)


def cmd_lock(args) -> int:
    from pathlib import Path

    from ..pipeline import lock_entry
    from ..upstream.lockfiles import project_dependencies, write_lock

    targets, projects = [], []
    for name in args.names:
        if Path(name).is_dir():  # a project folder, as upstream `kernels lock <project>` takes it
            if args.revision is not None or args.version is not None:
                return _usage_error(args, f"{name} is a project folder: its pyproject.toml gives each kernel's "
                                          f"version; drop --revision/--version")
            projects.append(Path(name))
            targets += [(repo_id, None, version) for repo_id, version in project_dependencies(name).items()]
        else:
            targets.append((name, args.revision, args.version))
    output = args.output or (projects[0] / "jitkernels.lock" if len(projects) == 1 and len(args.names) == 1
                             else "jitkernels.lock")
    entries = []
    for index, (name, revision, version) in enumerate(targets, 1):
        entry = lock_entry(args.provider, name, revision=revision, version=version, backend=args.backend,
                           trust_remote_code=args.trust_remote_code)
        _say(f"[{index}/{len(targets)}] {entry['dependency']['repo-id']}: {entry['lock']['commit'][:12]}, "
             f"{len(entry['jitkernels']['files'])} files")
        entries.append(entry)
    args.output = str(output)
    write_lock(args.output, entries)
    if args.json:
        _print_json({"output": str(args.output), "kernels": [
            {"repo_id": e["dependency"]["repo-id"], "commit": e["lock"]["commit"],
             "files": len(e["jitkernels"]["files"])} for e in entries]})
    else:
        _say(f"wrote {args.output}")
    return 0


# -- verify ----------------------------------------------------------------------------------------

def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="re-hash every cache entry (loads only compare file sizes) and remove "
                                      "damaged ones, so that their next load makes them again")
    p.add_argument("--keep", action="store_true",
                   help="only report damaged entries (loads keep importing a same-size alteration until removed)")
    _add_json(p)
    p.set_defaults(func=cmd_verify)


def cmd_verify(args) -> int:
    """Re-hash every published entry (the full check; loads only compare sizes); remove the damaged ones."""
    from ..cache import admin

    count, damaged = admin.verify(remove_damaged=not args.keep)
    if args.json:
        _print_json({"entries": count, "intact": count - len(damaged), "damaged": damaged})
    else:
        for d in damaged:
            state = "removed" if d["removed"] else ("kept" if args.keep else f"NOT removed: {d['kept']}")
            _say(f"DAMAGED {d['entry']}: {d['problem']} ({state})")
        _say(f"{count - len(damaged)} of {count} cache entries intact")
        removed = sum(d["removed"] for d in damaged)
        if removed:
            _say(f"error: {removed} damaged entries removed; they are made again on their next load")
        if len(damaged) > removed:
            _say(f"error: {len(damaged) - removed} damaged entries were not removed: loads may still import them. "
                 + ("Remove them with `jitkernels cache prune --damaged`." if args.keep else
                    "Remove them once nothing uses them (`jitkernels cache prune --damaged`), or fix the cache's "
                    "permissions (JITKERNELS_CACHE)."))
    return 1 if damaged else 0


# -- doctor ----------------------------------------------------------------------------------------

def _add_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="check Python, torch, compilers, GPUs, cache and Hub; with NAME, what "
                                      "loading that kernel would do and why")
    p.add_argument("name", nargs="?", default=None, help="a kernel to diagnose (optional)")
    _add_target_args(p)
    _add_json(p)
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args) -> int:
    from . import doctor

    data = doctor.report(args.name, provider=args.provider, revision=args.revision, version=args.version,
                         backend=args.backend)
    if args.json:
        _print_json(data)
    else:
        print(doctor.render(data))
        if args.name is not None:
            k = data["kernel"]
            print(f"\n{args.name}: would {k['would']}: {k['why']}")
    return 1 if args.name is not None and data["kernel"]["would"] == "fail" else 0


# -- test ------------------------------------------------------------------------------------------

def _add_test(sub) -> None:
    p = sub.add_parser("test", help="run a kernel's own tests/ against its JIT build (its source tree)",
                       description="Build (or reuse) the kernel from its source tree, make it importable by its "
                                   "package name and through a patched kernels.get_kernel, and run pytest on its "
                                   "tests/ folder. Arguments after NAME (or after --) go to pytest.")
    p.add_argument("name", help="a kernel source tree (folder with build.toml), or a name LOCAL_KERNELS maps")
    p.add_argument("--backend", default=None, help="build for this backend (default: this machine's)")
    p.add_argument("--time-box", type=float, default=None, metavar="SECONDS",
                   help="start no test after this many seconds (a time-boxed subset)")
    _add_json(p)
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed to pytest (-k EXPR, -x, tests/test_x.py...)")
    p.set_defaults(func=cmd_test)


def _own_test_options(args, rest: list[str]) -> list[str] | None:
    """``jitkernels test NAME --time-box 60 -k fwd``: our options may follow NAME (argparse's REMAINDER
    takes them all); they are taken out of the pytest arguments up to a ``--``, after which all is pytest's."""
    out = []
    while rest:
        token = rest.pop(0)
        if token == "--":
            return out + rest
        key, eq, value = token.partition("=")
        if key == "--json" and not eq:
            args.json = True
        elif key in ("--backend", "--time-box"):
            if not eq:
                if not rest:
                    return None
                value = rest.pop(0)
            if key == "--backend":
                args.backend = value
            else:
                try:
                    args.time_box = float(value)
                except ValueError:
                    return None
        else:
            out.append(token)
    return out


def cmd_test(args) -> int:
    from . import kernel_tests

    pytest_args = _own_test_options(args, list(args.pytest_args))
    if pytest_args is None:
        return _usage_error(args, "--backend needs a value and --time-box a number of seconds")
    if args.time_box is not None and args.time_box <= 0:
        return _usage_error(args, "--time-box must be a positive number of seconds")
    if args.json:
        with contextlib.redirect_stdout(sys.stderr):  # pytest's report goes to stderr, the summary to stdout
            code, summary = kernel_tests.run(args.name, pytest_args, backend=args.backend, time_box=args.time_box,
                                             say=_say)
        _print_json(summary)
    else:
        code, summary = kernel_tests.run(args.name, pytest_args, backend=args.backend, time_box=args.time_box,
                                         say=_say)
    return code


# -- demo ------------------------------------------------------------------------------------------

def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="load a bundled example kernel through a local Hub and run it")
    p.add_argument("--no-native", action="store_true", help="skip compiling the example native kernel")
    _add_json(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from .demo import run_demo

    if not args.json:
        return run_demo(native=not args.no_native)
    with contextlib.redirect_stdout(sys.stderr):  # the narration goes to stderr, the verdict to stdout
        code = run_demo(native=not args.no_native)
    _print_json({"passed": code == 0})
    return code


# -- cache -----------------------------------------------------------------------------------------

def _add_cache(sub) -> None:
    p = sub.add_parser("cache", help="print the cache folder, or list, inspect, prune or clear its entries")
    _add_json(p)
    p.set_defaults(func=cmd_cache, action=None)
    actions = p.add_subparsers(dest="action", parser_class=_Parser)
    q = actions.add_parser("list", help="every entry: kernel, revision, backend, archs, ABI, size, last use; "
                                        "then background builds (running, failed) and their logs")
    _add_json(q)
    q = actions.add_parser("info", help="the entries of one kernel (or one entry folder name)")
    q.add_argument("name")
    _add_json(q)
    q = actions.add_parser("prune", help="remove entries not used lately, not loadable here, or damaged")
    q.add_argument("--older-than", type=float, metavar="DAYS", help="not used for DAYS days")
    q.add_argument("--unloadable", action="store_true", help="native entries for another Python ABI or torch build")
    q.add_argument("--damaged", action="store_true", help="entries that fail the integrity check")
    q.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    _add_json(q)
    q = actions.add_parser("clear", help="remove every entry not in use, the indexes, memos and logs")
    q.add_argument("--yes", action="store_true", help="really clear")
    q.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    _add_json(q)


def cmd_cache(args) -> int:
    from .. import config
    from ..cache import admin as cache_admin

    action = getattr(args, "action", None)
    if action is None:
        if args.json:
            _print_json({"cache_dir": str(config.cache_dir())})
        else:
            print(config.cache_dir())
        return 0
    if action == "list":
        infos = cache_admin.list_entries()
    elif action == "info":
        infos = cache_admin.find(args.name)
        if not infos:
            from ..errors import CacheError

            raise CacheError(f"No cache entry named {args.name!r} in {config.cache_dir()} "
                             f"(`jitkernels cache list` shows them).")
    else:
        if action == "prune" and args.older_than is None and not args.unloadable and not args.damaged:
            return _usage_error(args, "say what to prune: --older-than DAYS, --unloadable or --damaged")
        if action == "clear" and not (args.yes or args.dry_run):
            return _usage_error(args, "clearing removes every entry; pass --yes (or --dry-run)")
        here = None
        if action == "prune" and args.unloadable:  # what this interpreter can load: its Python ABI, its torch
            import torch

            from .. import machine

            here = (machine.python_abi_tag(), torch.__version__)
        removed, busy = (cache_admin.prune(args.older_than, here, args.damaged, args.dry_run)
                         if action == "prune" else cache_admin.clear(args.dry_run))
        if args.json:
            _print_json({"removed": [e.to_dict() for e in removed], "in_use": [e.to_dict() for e in busy],
                         "dry_run": args.dry_run})
        else:
            verb = "would remove" if args.dry_run else "removed"
            for e in removed:
                print(f"{verb} {e.name} ({e.kernel or '-'}, {tables.human_size(e.size)})")
            for e in busy:
                print(f"kept {e.name}: in use by another process", file=sys.stderr)
            print(f"{verb} {len(removed)} entries, {tables.human_size(sum(e.size for e in removed))}")
        return 0
    background = cache_admin.background_builds() if action == "list" else []
    if args.json:
        _print_json([e.to_dict() for e in infos] + [b.to_dict() for b in background])
    elif action == "info":
        for e in infos:
            print(tables.entry_info(e) + "\n")
    else:
        tables.print_entries(infos)
        tables.print_background_builds(background)
    return 0


# -- the program -----------------------------------------------------------------------------------

#: One entry per command, in the order ``--help`` lists them.
COMMANDS = (_add_inspect, _add_warmup, _add_build, _add_export, _add_lock, _add_verify, _add_doctor, _add_test,
            _add_demo, _add_cache)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a JSON object when ``--json`` was asked."""

    json_errors = False

    def error(self, message: str):  # noqa: D401 - argparse's hook
        if _Parser.json_errors:
            _print_json({"error": {"type": "UsageError", "message": f"{self.prog}: {message}", "exit_code": 2}})
            sys.exit(2)
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    from ..config import VERSION

    parser = _Parser(prog="jitkernels", description="JIT-first loader for Hugging Face Hub kernels.")
    parser.add_argument("--version", action="version", version=f"jitkernels {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _Parser.json_errors = "--json" in argv
    args = build_parser().parse_args(argv)
    from ..log import setup

    setup()  # progress and messages reach stderr unless logging is configured (see jitkernels.log)
    try:
        return args.func(args)
    except JitKernelsError as exc:
        if getattr(args, "json", False):
            _print_json(_error_payload(exc, 1))
            return 1
        # One clear line; a compile error keeps its compiler output below it.
        first, _, rest = str(exc).strip().partition("\n")
        print(f"error: {first}", file=sys.stderr)
        if rest:
            print(rest, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if getattr(args, "json", False):
            _print_json({"error": {"type": "KeyboardInterrupt", "message": "interrupted", "exit_code": 130}})
        else:
            print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
