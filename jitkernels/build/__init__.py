"""From a plan to a cache entry: a Python package as it is, or a native library compiled here.

* :mod:`.python`: a Python (or Triton) kernel's package staged as it is;
* :mod:`.toolchain`: which CUDA compiler builds a kernel and why (a local
  toolkit, or NVIDIA's compiler wheels provisioned from the package index);
* :mod:`.native`: the native build (spec, flags, generated code, ninja, compiler cache).
"""
