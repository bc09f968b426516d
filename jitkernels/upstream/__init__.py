"""Everything that touches the upstream ``kernels`` package, so that its next release changes one folder.

* :mod:`.patching`: ``jitkernels.patch()`` / ``unpatch()``, which redirect its loaders to JitKernels;
* :mod:`.autopatch`: the ``JITKERNELS_AUTOPATCH=1`` startup hook;
* :mod:`.errors`: JitKernels errors that are also the types upstream raises;
* :mod:`.lockfiles`: one reader for upstream's ``kernels.lock`` and JitKernels' ``jitkernels.lock``;
* :mod:`.export`: a built kernel written as upstream's ``build/<variant>/``.
"""
