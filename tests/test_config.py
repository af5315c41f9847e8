"""The shipped config file documents the defaults; bad configs are refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsvc.config import DEFAULT_CONFIG_PATH, Config, load_config
from recsvc.errors import BadInput


def test_shipped_file_is_exactly_the_builtin_defaults() -> None:
    assert load_config(DEFAULT_CONFIG_PATH) == Config()


def test_keys_left_out_keep_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[model.als]\nfactors = 8\n[data.events.names]\nview = ['pv', 'click']\n")
    config = load_config(path)
    assert config.model.als.factors == 8
    assert config.model.als.iterations == Config().model.als.iterations
    assert config.data.events.names.view == ["pv", "click"]
    assert config.data.events.names.purchase == ["purchase"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[model.als]\nfactor = 8\n", "unknown key model.als.factor"),
        ("[model.als]\nfactors = 'many'\n", "model.als.factors must be int"),
        ("[signals]\nscaling = 'cube'\n", "signals.scaling must be one of"),
        ("[signals\n", "not valid TOML"),
    ],
)
def test_bad_config_is_bad_input(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(BadInput, match=message):
        load_config(path)


def test_event_value_mapped_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[data.events.names]\nview = ['pv']\ncart = ['pv']\n")
    with pytest.raises(BadInput, match="'pv' is mapped to both view and cart"):
        load_config(path).data.events.names.source_to_event()


def test_a_required_resource_fails_instead_of_skipping(monkeypatch: pytest.MonkeyPatch) -> None:
    """.ci/run lists what this machine must run (RECSVC_TESTS_REQUIRE): a test that would skip
    for one of those fails, with the same reason, instead of vanishing into the skip count."""
    import helpers

    monkeypatch.setattr(helpers, "REQUIRED", {"redis"})
    with pytest.raises(pytest.fail.Exception, match="redis-server is missing"):
        helpers.skip_for_missing("redis", "redis-server is missing")
    with pytest.raises(pytest.skip.Exception, match="no java"):
        helpers.skip_for_missing("java", "no java")
