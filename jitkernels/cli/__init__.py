"""The ``jitkernels`` command (:mod:`.main`), its ``doctor`` (:mod:`.doctor`) and ``demo`` (:mod:`.demo`)."""

from .main import main

__all__ = ["main"]
