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


# ---- headers and TLS -------------------------------------------------------------------------

TOKEN = "tok-9b1d0c3a77e2f5"


def test_header_values_from_the_environment_and_never_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE1_TOKEN", f"Bearer {TOKEN}")
    path = write(tmp_path, """
sources:
  - name: source1
    url: https://events.example.com/v1/events
    headers:
      Authorization: {env: SOURCE1_TOKEN}
      X-Api-Key: literal-key-in-file
""")
    [source] = load_sources(path)
    assert [(n, h.value) for n, h in source.headers] == [("Authorization", f"Bearer {TOKEN}"),
                                                        ("X-Api-Key", "literal-key-in-file")]
    assert source.to_dict()["headers"] == {"Authorization": {"env": "SOURCE1_TOKEN"}, "X-Api-Key": "***"}
    for text in (repr(source), str(source), str(source.to_dict())):
        assert TOKEN not in text and "literal-key-in-file" not in text
    assert "SOURCE1_TOKEN" in repr(source)  # where the value comes from may be shown


@pytest.mark.parametrize(
    "headers, message",
    [
        ("Authorization: {env: SOURCE1_TOKEN}",
         "source 'a': field 'headers': header 'Authorization': environment variable SOURCE1_TOKEN is not set"),
        ("Authorization: {env: 'bad name'}", "header 'Authorization': expected {env: VARIABLE_NAME}"),
        ("Authorization: {file: /x}", "header 'Authorization': expected {env: VARIABLE_NAME}"),
        ("X-Count: 3", "header 'X-Count': expected a string or {env: VARIABLE_NAME}, got int"),
        ("'Bad Name': x", "field 'headers': 'Bad Name' is not a valid header name"),
        ("Host: evil.example.com", "header 'Host' is set by the HTTP client"),
        ("Accept-Encoding: br", "header 'Accept-Encoding' is set by the HTTP client"),
        ("{X-A: '1', x-a: '2'}", "header 'x-a' given twice"),
        ("X-Token: \"line\\r\\nInjected: 1\"", "header 'X-Token': the value holds a control character"),
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
