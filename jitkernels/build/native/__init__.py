"""Native builds: :mod:`.spec` (the build as a value, its cache key), :mod:`.flags` and :mod:`.codegen`
(what kernel-builder passes and generates), :mod:`.compiler_cache`, and :mod:`.builder` (ninja in a workspace).
"""
