"""The sources plan alone: a sources file given (option or environment), or the mock sources."""

from __future__ import annotations

import pytest

from event_ingest.config import SOURCES_ENV, ConfigError, load_sources
from event_ingest.devstack.sources import plan_sources

GIVEN = "sources:\n  - name: shop\n    url: http://127.0.0.1:9/events\n"


def test_no_file_given_plans_the_mock_sources_and_writes_their_file(tmp_path):
    plan = plan_sources(None, {}, no_mock=False, port_base=4001, generated_file=tmp_path / "sources.yaml")
    urls = {f"source{i}": f"http://127.0.0.1:{4000 + i}/events" for i in (1, 2, 3)}
    assert plan.urls == urls and plan.mock and plan.generated and not plan.from_env
    assert {s.name: s.url for s in load_sources(plan.file)} == urls
    assert all(s.timeout_s == 2 for s in load_sources(plan.file))
    assert plan.mock_ports(4001) == {"source1": 4001, "source2": 4002, "source3": 4003}


def test_no_mock_sources_still_lists_them(tmp_path):
    plan = plan_sources(None, {}, no_mock=True, port_base=4001, generated_file=tmp_path / "sources.yaml")
    assert plan.generated and not plan.mock and plan.mock_ports(4001) == {}
    assert list(plan.urls) == ["source1", "source2", "source3"] and plan.file.exists()


@pytest.mark.parametrize("via", ["option", "environment"])
def test_a_given_file_is_used_as_is(tmp_path, via):
    given = tmp_path / "mine.yaml"
    given.write_text(GIVEN)
    option, environ = (str(given), {}) if via == "option" else (None, {SOURCES_ENV: str(given)})
    plan = plan_sources(option, environ, no_mock=False, port_base=4001, generated_file=tmp_path / "sources.yaml")
    assert plan.file == given and plan.urls == {"shop": "http://127.0.0.1:9/events"}
    assert not plan.mock and not plan.generated and plan.from_env == (via == "environment")
    assert not (tmp_path / "sources.yaml").exists()


def test_the_option_wins_over_the_environment(tmp_path):
    given = tmp_path / "mine.yaml"
    given.write_text(GIVEN)
    environ = {SOURCES_ENV: str(tmp_path / "missing.yaml")}
    plan = plan_sources(str(given), environ, no_mock=False, port_base=1, generated_file=tmp_path / "s.yaml")
    assert plan.file == given and not plan.from_env


def test_a_bad_file_fails_before_anything_starts(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - name: x\n")
    with pytest.raises(ConfigError):
        plan_sources(str(bad), {}, no_mock=False, port_base=1, generated_file=tmp_path / "s.yaml")
