"""Property-based tests: the build.toml parser and the name mapping only ever raise the project's errors."""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitkernels.plan.buildconfig import parse_build_toml
from jitkernels.errors import JitKernelsError
from jitkernels.providers import get_provider

_text = st.text(alphabet=string.printable + "é\x00", max_size=40)
_scalar = st.one_of(st.integers(-5, 5), st.booleans(), _text, st.lists(_text, max_size=4))
_table = st.dictionaries(
    st.sampled_from(["name", "version", "edition", "backends", "src", "depends", "backend", "include",
                     "cxx-flags", "cuda-flags", "stable-abi", "minver", "maxver", "pyext", "license",
                     "cuda-capabilities", "repo-id", "python-depends", "junk"]),
    _scalar, max_size=6,
)
_doc = st.fixed_dictionaries(
    {},
    optional={
        "general": st.one_of(_table, _scalar),
        "torch": st.one_of(_table, _scalar),
        "torch-noarch": st.one_of(_table, _scalar),
        "kernel": st.dictionaries(st.text(string.ascii_letters + "_-.", min_size=1, max_size=8),
                                  st.one_of(_table, _scalar), max_size=3),
    },
)


def _toml(value, prefix="") -> str:
    import json

    lines, tables = [], []
    for key, item in value.items():
        if isinstance(item, dict):
            tables.append((key, item))
        else:
            lines.append(f"{json.dumps(key)} = {json.dumps(item)}")
    out = ([f"[{prefix}]"] if prefix else []) + lines
    for key, item in tables:
        out.append(_toml(item, f"{prefix}.{json.dumps(key)}" if prefix else json.dumps(key)))
    return "\n".join(out) + "\n"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(_doc)
def test_structured_build_toml_never_raises_foreign_errors(doc):
    try:
        text = _toml(doc)
    except (TypeError, ValueError):
        return
    try:
        parse_build_toml(text)
    except JitKernelsError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_raises_foreign_errors(text):
    try:
        parse_build_toml(text)
    except JitKernelsError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=120))
def test_name_mapping_never_raises_foreign_errors_and_stays_inside(name):
    provider = get_provider("hf")
    try:
        ref = provider.parse_name(name)
    except JitKernelsError:
        return
    org, short = ref.repo_id.split("/")
    assert ".." not in ref.repo_id and not ref.repo_id.startswith("/")
    assert ref.python_name.isidentifier()  # it becomes a Python package name
    for part in (org, short):
        assert part and part not in (".", "..") and "/" not in part and "\x00" not in part
