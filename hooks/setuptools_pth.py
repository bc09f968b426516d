"""Setuptools glue that ships ``hooks/jitkernels-autopatch.pth`` into site-packages.

Referenced from ``pyproject.toml`` (``[tool.setuptools.cmdclass]``); runs only
at build time. A wheel's purelib root *is* site-packages, so copying the .pth
next to the ``jitkernels`` package in ``build_lib`` installs it for
``pip install .``; for ``pip install -e .`` setuptools (PEP 660) puts the
same build outputs into the editable wheel (see hooks/README.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools.command.build_py import build_py as _build_py

PTH = "jitkernels-autopatch.pth"
SOURCE = Path(__file__).resolve().with_name(PTH)


class build_py(_build_py):
    def run(self) -> None:
        super().run()
        self.copy_file(str(SOURCE), os.path.join(self.build_lib, PTH), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH)]

    def get_output_mapping(self) -> dict[str, str]:
        # editable installs (setuptools >= 64) ask which file each output comes from
        mapping = dict(super().get_output_mapping())
        mapping[os.path.join(self.build_lib, PTH)] = str(SOURCE)
        return mapping


try:  # setuptools >= 64 (PEP 660 editable installs)
    from setuptools.command.editable_wheel import editable_wheel as _editable_wheel
except ImportError:  # pragma: no cover - old setuptools: `pip install -e .` falls back to develop
    _editable_wheel = None

if _editable_wheel is not None:

    class editable_wheel(_editable_wheel):
        """``pip install -e .``: the editable wheel carries the same .pth at its root.

        setuptools writes every file of its "unpacked wheel" folder into the
        editable wheel; the build outputs themselves are not copied (they stay
        linked to the source tree), so the .pth is added to that folder here.
        If a future setuptools renames the private ``_run_build_commands``,
        this override is simply not called and hooks/README.md's
        ``sitecustomize`` fallback applies.
        """

        def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
            result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
            self.copy_file(str(SOURCE), os.path.join(unpacked_wheel, PTH), preserve_mode=False)
            return result
