"""From a kernel's files to a plan: what it is (build.toml, metadata.json), how to load it, and why.

* :mod:`.buildconfig` and :mod:`.metadata`: parse ``build.toml`` and a build
  variant's ``metadata.json``, refusing hostile input;
* :mod:`.strategy`: the pure decision for a source tree (``python``,
  ``native-jit`` or ``unsupported`` with a reason);
* :mod:`.inspection`: the :class:`~jitkernels.plan.inspection.Inspection` the
  CLI prints, with every option considered;
* :mod:`.planner`: a snapshot's file list -> an inspection and a
  :class:`~jitkernels.plan.planner.SourcePlan` (what to fetch, from where).
"""
