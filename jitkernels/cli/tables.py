"""How the CLI shows things: an inspection as aligned lines, the cache's entries as a table, sizes, times."""

from __future__ import annotations

import sys
import time

_FIELDS = [
    "strategy", "reason", "backend", "repo_id", "revision", "requested_revision", "source",
    "source_location", "python_name", "module_name", "expected_extension_name", "dependencies",
    "unsupported_dependencies", "python_depends", "kernel_depends", "kernels", "stable_abi", "edition", "cuda_compiler",
    "detail",
]


def inspection(found) -> str:
    """``jitkernels inspect``: every field, then the inputs and the options considered, one per line."""
    data = found.to_dict()
    width = max(len(k) for k in _FIELDS)
    lines = []
    for key in _FIELDS:
        value = data.get(key)
        if isinstance(value, list):
            value = ", ".join(value) if value else "-"
        lines.append(f"{key:<{width}}  {value if value not in (None, '') else '-'}")
    lines += _input_lines(data.get("inputs") or [], width)
    lines += _considered_lines(data.get("considered") or [], width)
    return "\n".join(lines)


def _considered_lines(considered: list[dict], width: int) -> list[str]:
    """Each option the planner looked at: ``chosen`` or ``rejected``, and why."""
    return [f"{'considered' if index == 0 else '':<{width}}  {'chosen' if o['chosen'] else 'rejected'}: "
            f"{o['option']}: {o['reason']}" for index, o in enumerate(considered)]


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


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def when(stamp: float | None, seconds: bool = False) -> str:
    return time.strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else ""), time.localtime(stamp)) if stamp else "-"


def entry_info(e) -> str:
    """``jitkernels cache info``: one ``key value`` line per field, times and sizes for people to read."""
    shown = {**e.to_dict(), "size": f"{human_size(e.size)} ({e.size} bytes)",
             "created": when(e.created, seconds=True), "last_use": when(e.last_use, seconds=True)}
    return "\n".join(f"{k:<9} {'-' if v is None else v}" for k, v in shown.items())


def print_entries(infos, out=None) -> None:
    """``jitkernels cache list``: one row per entry (:class:`jitkernels.cache.admin.EntryInfo`)."""
    from ..cache import layout

    out = out if out is not None else sys.stdout  # looked up now: stdout may have been replaced since import
    rows = [["entry", "kernel", "revision", "backend", "kind", "archs", "abi", "size", "last use"]]
    for e in infos:
        rows.append([e.name, e.kernel or "-", (e.revision or "-")[:12], e.backend or "-", e.kind,
                     ",".join(e.archs) or "-", e.abi or "-", human_size(e.size),
                     when(e.last_use) + ("" if e.intact else "  DAMAGED")])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)
    total = sum(e.size for e in infos)
    print(f"{len(infos)} entries, {human_size(total)} in {layout.root()}", file=out)


def print_background_builds(builds, out=None) -> None:
    """``jitkernels cache list``, after the entries: background builds running, failed or stopped, with their logs."""
    out = out if out is not None else sys.stdout
    if not builds:
        return
    print("background builds:", file=out)
    for b in builds:
        if b.state == "building":
            state = f"building since {when(b.started)} (pid {b.pid or '?'} on {b.host or '?'})"
        elif b.state == "failed":
            state = f"FAILED {when(b.finished)}: {b.error or 'unknown error'}"
        else:
            state = f"stopped (its builder, pid {b.pid or '?'} on {b.host or '?'}, died without a word)"
        asked = f", for {b.requested_by}" if b.requested_by else ""
        print(f"  {b.entry}  {b.kernel or '-'}  {state}{asked}", file=out)
        print(f"    log: {b.log or '-'}" + (f"  compiler output: {b.build_log}" if b.build_log else ""), file=out)
