"""From a plan to a cache entry: :mod:`.python` (a Python package as it is) and :mod:`.native` (a compiled one)."""
