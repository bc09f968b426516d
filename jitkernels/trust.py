"""Who may run a kernel's code: one rule for every load, pinned or not, online or offline.

A kernel's code runs only if this call grants trust (``trust_remote_code=True``
or a list naming the repository, ``JITKERNELS_TRUSTED``), its publisher is on
the default list (``kernels-community``), or the Hub flags its publisher
``trustedKernelPublisher`` (asked online by the provider and recorded per
commit, so an offline load of that commit can rely on it). A caller's grant is
never recorded: loading a commit once with ``trust_remote_code=True`` does not
make it loadable without it later. Local folders are the user's own.

Stdlib only: the warm path checks every index record with :func:`trusted`.
"""

from __future__ import annotations

from . import config

#: How a kernel's publisher came to be trusted. Durable grants hold for every later load of that
#: commit (they are facts about the publisher); the caller's own grants (``trust_remote_code``,
#: ``JITKERNELS_TRUSTED``) hold only for the calls that give them again.
DURABLE_GRANTS = frozenset({"default-list", "hub-flag", "local"})


def caller_grant(repo_id: str | None, trust_remote_code) -> str | None:
    """The trust the caller gives ``repo_id`` for this call, without asking anyone: a grant name or None."""
    if trust_remote_code is True:
        return "trust_remote_code"
    if repo_id is None:
        return None
    if isinstance(trust_remote_code, (list, tuple, set, frozenset)) and repo_id in trust_remote_code:
        return "trust_remote_code"
    allowed = config.trusted_orgs_extra()
    if repo_id in allowed or repo_id.split("/", 1)[0] in allowed:
        return "JITKERNELS_TRUSTED"
    if repo_id.split("/", 1)[0] in config.DEFAULT_TRUSTED_PUBLISHERS:
        return "default-list"
    return None


def trusted(recorded: str | None, grant: str | None) -> bool:
    """May code whose record carries the grant ``recorded`` run for a call that grants ``grant``?

    Yes if the caller grants trust now, or if the record holds a durable grant.
    """
    return grant is not None or recorded in DURABLE_GRANTS
