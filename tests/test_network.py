"""The network down or the Hub unreachable: the last resolved commit, or a fast clear error."""

from __future__ import annotations

import time

import pytest

import jitkernels
from jitkernels.errors import FetchError

from conftest import RMS, go_offline


def test_network_down_unpinned_uses_last_commit_with_one_warning(online, caplog):
    k = jitkernels.load("hf", RMS, revision="main", backend="cpu")
    from jitkernels import warm

    warm.LOADED.clear()
    online.down = True
    with caplog.at_level("WARNING", logger="jitkernels"):
        again = jitkernels.load("hf", RMS, revision="main", backend="cpu")
    assert again is k
    warnings = [r for r in caplog.records if "resolved to last time" in r.getMessage()]
    assert len(warnings) == 1


def test_network_down_cold_cache_fails_fast_and_clearly(online):
    online.down = True
    start = time.monotonic()
    with pytest.raises(FetchError, match="Could not reach the Hub"):
        jitkernels.load("hf", RMS, revision="main", backend="cpu")
    assert time.monotonic() - start < 15


def test_offline_org_name_with_underscores_finds_the_hyphenated_repo(online, monkeypatch):
    k = jitkernels.load("hf", "jitkernels-examples/rms_norm", revision="main", backend="cpu")
    go_offline(monkeypatch)
    from jitkernels import warm

    warm.LOADED.clear()
    assert jitkernels.load("hf", "jitkernels-examples/rms_norm", revision="main", backend="cpu") is k


@pytest.mark.parametrize("value", ["inf", "nan", "-3", "1e300", "soon"])
def test_a_timeout_that_is_not_a_sane_number_of_seconds_falls_back_to_the_default(monkeypatch, value):
    """JITKERNELS_TIMEOUT=inf made every load fail with 'timestamp out of range' while doctor said the Hub was fine."""
    from jitkernels import config

    monkeypatch.setenv("JITKERNELS_TIMEOUT", value)
    assert config.network_timeout() == 10.0
