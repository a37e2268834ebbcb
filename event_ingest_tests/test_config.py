"""The sources file: defaults, overrides, and one clear line per mistake."""

from __future__ import annotations

import pytest

from event_ingest.config import ConfigError, load_sources, redact_url


def write(tmp_path, text):
    path = tmp_path / "sources.yaml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path):
    path = write(tmp_path, """
sources:
  - name: source1
    url: http://127.0.0.1:3001/events
  - name: source2
    url: http://127.0.0.1:3002/events
    page_size: 500
    min_interval_ms: 250
""")
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


@pytest.mark.parametrize("text, message", [
    ("", "expected a top-level 'sources:' list"),
    ("sources: []", "non-empty list"),
    ("sources:\n  - name: [unclosed", "not valid YAML at line"),
    ("sources: [{name: a, url: 'http://h/e'}]\nextra: 1", "top-level field 'extra'"),
])
def test_bad_files(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_sources(write(tmp_path, text))


def test_missing_file_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="EVENT_INGEST_SOURCES"):
        load_sources(tmp_path / "nope.yaml")


def test_redact_url_hides_passwords():
    assert redact_url("postgresql://u:s3cret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
