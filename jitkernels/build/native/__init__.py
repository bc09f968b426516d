"""A native kernel compiled here, as kernel-builder would build it.

* :mod:`.spec`: the build as a value (units, flags, archs, the cache key);
* :mod:`.flags`: kernel-builder's compiler flags;
* :mod:`.codegen`: the generated ``registration.h``;
* :mod:`.compiler_cache`: sccache / ccache as a launcher;
* :mod:`.builder`: ninja in a build workspace, the library handed to the entry lifecycle.
"""
