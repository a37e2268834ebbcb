"""The sources file: defaults, overrides, and one clear line per mistake."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pydantic
import pytest

from event_ingest.config import (
    ConfigError,
    RunSettings,
    SourceConfig,
    load_config,
    load_sources,
    redact_url,
)


def write(tmp_path, text):
    path = tmp_path / "sources.yaml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path):
    path = write(
        tmp_path,
        """
sources:
  - name: source1
    url: http://127.0.0.1:3001/events
  - name: source2
    url: http://127.0.0.1:3002/events
    page_size: 500
    min_interval_ms: 250
""",
    )
    one, two = load_sources(path)
    assert (one.page_size, one.min_interval_ms) == (1000, 200)
    assert (two.page_size, two.min_interval_ms) == (500, 250)


def test_env_var_names_the_file(tmp_path, monkeypatch):
    path = write(tmp_path, "sources:\n  - name: a\n    url: http://h/e\n")
    monkeypatch.setenv("EVENT_INGEST_SOURCES", str(path))
    assert load_sources()[0].name == "a"


@pytest.mark.parametrize(
    "entry, message",
    [
        ("name: a\n    url: http://h/e\n    colour: red", "source 'a': field 'colour' is not known"),
        ("name: A-1\n    url: http://h/e", "field 'name': 'A-1' is not a valid source name"),
        ("name: a\n    url: ftp://h/e", "source 'a': field 'url'"),
        ("name: a\n    url: http://h/e?lastId=3", "source 'a': field 'url'"),
        ("name: a", "source 'a': field 'url' is missing"),
        ("name: a\n    url: http://h/e\n    min_interval_ms: 150", "source 'a': field 'min_interval_ms': 150"),
        ("name: a\n    url: http://h/e\n    page_size: true", "source 'a': field 'page_size'"),
        ("name: a\n    url: http://h/e\n    timeout_s: fast", "source 'a': field 'timeout_s'"),
    ],
)
def test_bad_sources_fail_with_one_line_naming_file_source_and_field(tmp_path, entry, message):
    path = write(tmp_path, f"sources:\n  - {entry}\n")
    with pytest.raises(ConfigError) as info:
        load_sources(path)
    text = str(info.value)
    assert str(path) in text and message in text and "\n" not in text


def test_duplicate_names(tmp_path):
    path = write(tmp_path, "sources:\n  - {name: a, url: 'http://h/1'}\n  - {name: a, url: 'http://h/2'}\n")
    with pytest.raises(ConfigError, match=r"source 'a': field 'name': duplicate"):
        load_sources(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "expected a top-level 'sources:' list"),
        ("sources: []", "non-empty list"),
        ("sources:\n  - name: [unclosed", "not valid YAML at line"),
        ("sources: [{name: a, url: 'http://h/e'}]\nextra: 1", "top-level field 'extra'"),
    ],
)
def test_bad_files(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_sources(write(tmp_path, text))


def test_missing_file_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="EVENT_INGEST_SOURCES"):
        load_sources(tmp_path / "nope.yaml")


def test_redact_url_hides_passwords():
    assert redact_url("postgresql://u:s3cret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


# ---- headers and TLS -------------------------------------------------------------------------

TOKEN = "tok-9b1d0c3a77e2f5"


def test_header_values_from_the_environment_and_never_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE1_TOKEN", f"Bearer {TOKEN}")
    path = write(
        tmp_path,
        """
sources:
  - name: source1
    url: https://events.example.com/v1/events
    headers:
      Authorization: {env: SOURCE1_TOKEN}
      X-Api-Key: literal-key-in-file
""",
    )
    [source] = load_sources(path)
    assert [(n, h.value) for n, h in source.headers] == [
        ("Authorization", f"Bearer {TOKEN}"),
        ("X-Api-Key", "literal-key-in-file"),
    ]
    assert source.to_dict()["headers"] == {"Authorization": {"env": "SOURCE1_TOKEN"}, "X-Api-Key": "***"}
    for text in (repr(source), str(source), str(source.to_dict())):
        assert TOKEN not in text and "literal-key-in-file" not in text
    assert "SOURCE1_TOKEN" in repr(source)  # where the value comes from may be shown


@pytest.mark.parametrize(
    "headers, message",
    [
        (
            "Authorization: {env: SOURCE1_TOKEN}",
            "source 'a': field 'headers': header 'Authorization': environment variable SOURCE1_TOKEN is not set",
        ),
        ("Authorization: {env: 'bad name'}", "header 'Authorization': expected {env: VARIABLE_NAME}"),
        ("Authorization: {file: /x}", "header 'Authorization': expected {env: VARIABLE_NAME}"),
        ("X-Count: 3", "header 'X-Count': expected a string or {env: VARIABLE_NAME}, got int"),
        ("'Bad Name': x", "field 'headers': 'Bad Name' is not a valid header name"),
        ("Host: evil.example.com", "header 'Host' is set by the HTTP client"),
        ("Accept-Encoding: br", "header 'Accept-Encoding' is set by the HTTP client"),
        ("{X-A: '1', x-a: '2'}", "header 'x-a' given twice"),
        ('X-Token: "line\\r\\nInjected: 1"', "header 'X-Token': the value holds a control character"),
    ],
)
def test_bad_headers_fail_with_one_line(tmp_path, monkeypatch, headers, message):
    monkeypatch.delenv("SOURCE1_TOKEN", raising=False)
    path = write(tmp_path, f"sources:\n  - name: a\n    url: http://h/e\n    headers:\n      {headers}\n")
    with pytest.raises(ConfigError) as info:
        load_sources(path)
    text = str(info.value)
    assert str(path) in text and message in text and "\n" not in text
    assert "Injected" not in text  # a value is never echoed: it may be the secret


def test_a_variable_holding_a_line_break_is_refused_without_echoing_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE1_TOKEN", f"{TOKEN}\n")
    path = write(tmp_path, "sources:\n  - name: a\n    url: http://h/e\n    headers: {X-T: {env: SOURCE1_TOKEN}}\n")
    with pytest.raises(ConfigError, match="environment variable SOURCE1_TOKEN holds a control character") as info:
        load_sources(path)
    assert TOKEN not in str(info.value)


def test_ca_file(tmp_path, tls_files):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_bytes(tls_files.ca_file.read_bytes())
    (tmp_path / "not_a_ca.pem").write_text("hello")
    path = write(tmp_path, "sources:\n  - {name: a, url: 'https://h/e', ca_file: certs/ca.pem}\n")
    assert load_sources(path)[0].ca_file == str((tmp_path / "certs" / "ca.pem").resolve())
    for entry, message in [
        ("{name: a, url: 'http://h/e', ca_file: certs/ca.pem}", "field 'ca_file': only used for https urls"),
        ("{name: a, url: 'https://h/e', ca_file: nope.pem}", "field 'ca_file': "),
        ("{name: a, url: 'https://h/e', ca_file: not_a_ca.pem}", "is not a readable PEM CA bundle"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            load_sources(write(tmp_path, f"sources:\n  - {entry}\n"))
        assert "\n" not in str(info.value)


# ---- one declaration: errors, schema, docs and environment names all come from it -------------

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "entry, line",
    [
        # wrong type
        (
            "{name: a, url: 'http://h/e', timeout_s: fast}",
            "source 'a': field 'timeout_s': 'fast' is not valid; expected a number of seconds from 0.1 to 300",
        ),
        (
            "{name: a, url: 'http://h/e', max_attempts: 2.5}",
            "source 'a': field 'max_attempts': 2.5 is not valid; expected an integer from 1 to 100",
        ),
        ("{name: a, url: 42}", "source 'a': field 'url': expected a string, got int"),
        # out of range
        (
            "{name: a, url: 'http://h/e', page_size: 0}",
            "source 'a': field 'page_size': 0 is not valid; expected an integer from 1 to 100000",
        ),
        (
            "{name: a, url: 'http://h/e', idle_poll_ms: 100}",
            "source 'a': field 'idle_poll_ms': 100 is not valid; expected an integer of milliseconds "
            "from 200 to 3600000 (or null)",
        ),
        # unknown and missing fields
        (
            "{name: a, url: 'http://h/e', pagesize: 5}",
            "source 'a': field 'pagesize' is not known (known fields: name, url, "
            "page_size, min_interval_ms, timeout_s,",
        ),
        ("{url: 'http://h/e'}", "sources[0]: field 'name' is missing"),
        ("{name: a, page_size: 5}", "source 'a': field 'url' is missing"),
        # headers and ca_file
        (
            "{name: a, url: 'http://h/e', headers: [a, b]}",
            "source 'a': field 'headers': expected a mapping of header name to value",
        ),
        (
            "{name: a, url: 'http://h/e', headers: {X-Key: {env: NOT_SET_ANYWHERE_1234}}}",
            "source 'a': field 'headers': header 'X-Key': environment variable NOT_SET_ANYWHERE_1234 is not set",
        ),
        (
            "{name: a, url: 'http://h/e', ca_file: ca.pem}",
            "source 'a': field 'ca_file': only used for https urls, and the url is not https",
        ),
        ("{name: a, url: 'https://h/e', ca_file: 7}", "source 'a': field 'ca_file': expected a file path"),
        # a rule across fields: polled less often than its max_lag_s, a healthy source would be reported late
        (
            "{name: a, url: 'http://h/e', idle_poll_ms: 45000}",
            "source 'a': field 'idle_poll_ms': 45000 is not valid; expected at most max_lag_s (30 s = 30000 ms): a "
            "source polled less often than its max_lag_s is reported late while healthy (raise max_lag_s or lower "
            "idle_poll_ms)",
        ),
        # the shape around the sources
        ("5", "sources[0]: expected a mapping with 'name' and 'url', got int"),
    ],
)
def test_each_kind_of_mistake_is_one_line_naming_file_source_and_field(tmp_path, entry, line):
    path = write(tmp_path, f"sources:\n  - {entry}\n")
    assert refusal(path).startswith(f"{path}: {line}")


@pytest.mark.parametrize(
    "runs, line",
    [
        ("{sources_per_run: 0}", "runs: field 'sources_per_run': 0 is not valid; expected an integer from 1 to 1000"),
        (
            "{lease_ttl: 5}",
            "runs: field 'lease_ttl' is not known (known fields: sources_per_run, run_seconds, handoff_s, "
            "lease_ttl_s, report_every_s, sensor_interval_s, idle_exit_s)",
        ),
        ("{run_seconds: 100}", "runs: field 'handoff_s': 60 is not valid; expected at most half of run_seconds (100)"),
        ("[1]", "runs: expected a mapping, got list"),
        (
            "{sensor_interval_s: 60}",
            "runs: field 'sensor_interval_s': 60 is not valid; expected an integer of seconds from 5 to 30",
        ),
    ],
)
def test_runs_mistakes_are_one_line_naming_the_field(tmp_path, runs, line):
    path = write(tmp_path, f"sources: [{{name: a, url: 'http://h/e'}}]\nruns: {runs}\n")
    assert refusal(path) == f"{path}: {line}"


def refusal(path) -> str:
    """The error loading ``path`` gives: one line, in the project's words (pydantic's own text never shows)."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "\n" not in text and "pydantic" not in text and "validation error" not in text, text
    return text


def test_several_mistakes_report_the_first_and_count_the_rest(tmp_path):
    path = write(tmp_path, "sources:\n  - {name: a, url: 'http://h/e', page_size: 0, timeout_s: 0, colour: red}\n")
    assert re.search(r"field 'page_size': 0 is not valid; .* \(and 2 more problems\)$", refusal(path))


def test_a_source_built_in_code_is_validated_like_the_file_in_one_line():
    with pytest.raises(ConfigError) as info:
        SourceConfig(name="a", url="http://h/e", min_interval_ms=150)
    assert str(info.value) == (
        "source 'a': field 'min_interval_ms': 150 is not valid; expected an integer of milliseconds from 200 to 3600000"
    )
    with pytest.raises(
        ConfigError, match=r"^source 'a': field 'headers': header 'X-T': the value holds a control"
    ) as info:
        SourceConfig(name="a", url="http://h/e", headers={"X-T": f"{TOKEN}\r\nInjected: 1"})
    assert TOKEN not in str(info.value)
    with pytest.raises(ConfigError, match=r"^runs: field 'report_every_s': 0 is not valid"):
        RunSettings(report_every_s=0)


def test_a_source_is_frozen_hashable_and_keeps_its_public_shape(monkeypatch):
    monkeypatch.setenv("SOURCE1_TOKEN", f"Bearer {TOKEN}")
    source = SourceConfig(
        name="a",
        url="http://h/e",
        headers={"Authorization": {"env": "SOURCE1_TOKEN"}},
        min_interval_ms=250,
        idle_poll_ms=100_000,
        max_lag_s=100.0,
    )
    assert (source.min_interval_s, source.idle_poll_s) == (0.25, 100.0)
    assert source.secret_values() == [f"Bearer {TOKEN}", TOKEN]
    assert hash(source) == hash(
        SourceConfig(
            name="a",
            url="http://h/e",
            headers=source.headers,
            min_interval_ms=250,
            idle_poll_ms=100_000,
            max_lag_s=100.0,
        )
    )
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        source.page_size = 5  # type: ignore[misc]
    assert TOKEN not in json.dumps(source.model_dump()) + source.model_dump_json()
