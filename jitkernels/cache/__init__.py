"""The JitKernels cache: the one owner of what is on disk and how it changes.

* :mod:`.layout`: every path (the layout table that docs/cache.md shows);
* :mod:`.files`: atomic writes, folders that are never world-writable, the owner check;
* :mod:`.manifest`: what an entry holds (written and checked in one place);
* :mod:`.locks`: file locks that say who holds them;
* :mod:`.workspaces`: private staging folders and build workspaces, swept when their lock is free;
* :mod:`.entries`: the one lifecycle of an entry (look up, lock, stage, fill, verify, publish);
* :mod:`.index`: how loads find entries (by repository id, by name, local-folder memos, refs);
* :mod:`.remote`: the remote artifact cache shared by machines;
* :mod:`.admin`: what ``jitkernels cache`` and ``verify`` do.
"""
