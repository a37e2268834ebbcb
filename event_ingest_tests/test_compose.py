"""Static checks of the container deployment: Dockerfile, docker-compose.yml, deploy/.

No Docker engine is needed. The files are parsed and cross-checked against each other
and against what the code reads: every file a container is told about exists, every
environment variable the code or dagster.yaml reads is set, every host name and port
lines up, and no password is written down. When the `docker compose` plugin is
installed, `docker compose config` (which only parses) is run as well.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from event_ingest.config import load_sources

ROOT = Path(__file__).resolve().parents[1]
# The module Dagster loads, as the local workspace names it: containers must serve the same one.
LOCAL_MODULE = yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"][0]["python_module"]["module_name"]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY_MD = ROOT / "deploy" / "DEPLOY.md"
WORKSPACE_FILE = ROOT / "deploy" / "workspace.docker.yaml"

REQUIRED_SERVICES = {"postgres", "redis", "source1", "source2", "source3", "code", "webserver", "daemon"}
DAGSTER_SERVICES = ("code", "webserver", "daemon")
# The original system's mocks: every answer K new events, 20% of requests fail.
MOCK_SHAPE = {"source1": ("3", "0.2"), "source2": ("2", "0.2"), "source3": ("4", "0.2")}
# Code that never runs in the containers: the local dev stack starts its own servers, and the
# `python3 -m event_ingest` bootstrap makes a local .venv (the image installs the package itself).
ENV_SCAN_EXCLUDE = ("devstack", "__main__.py")
# Variables only the test suite reads (EVENT_INGEST_TEST_DATABASE_URL, ...).
TEST_ONLY_ENV_PREFIX = "EVENT_INGEST_TEST_"

ENV_NAME_RE = re.compile(r"EVENT_INGEST_[A-Z0-9_]+")
SUBSTITUTION_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
SECRET_KEY_RE = re.compile(r"PASSWORD|SECRET|TOKEN|PASSWD", re.IGNORECASE)
URL_CREDENTIALS_RE = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]*:([^/\s@]+)@", re.IGNORECASE)


# ---- helpers ---------------------------------------------------------------


def interpolate(value: str) -> str:
    """Compose-style substitution for the static checks: ${X:-d} and ${X-d} give d;
    ${X}, ${X:?msg} and $X give the placeholder <X>; $$ is a literal $."""

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3)
        if operator in (":-", "-"):
            return argument
        return f"<{name}>"

    parts = value.split("$$")
    return "$".join(SUBSTITUTION_RE.sub(replace, part) for part in parts)


def only_substitution(value: str) -> bool:
    """True when the value is exactly one ${...} with no default (nothing literal)."""
    match = SUBSTITUTION_RE.fullmatch(value)
    return bool(match) and match.group(2) not in (":-", "-")


def as_argv(command) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def option(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg in names and i + 1 < len(argv):
            return argv[i + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def depends_on(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def healthcheck_text(service: dict) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    if test is None:
        return ""
    return test if isinstance(test, str) else " ".join(str(t) for t in test)


def volume_entries(service: dict) -> list[tuple[str, str, str]]:
    """(kind, source, target) per volume; kind is 'bind' or 'volume'; source interpolated."""
    result = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            source, target = interpolate(str(entry.get("source", ""))), str(entry["target"])
            kind = entry.get("type", "volume")
        else:
            fields = interpolate(entry).split(":")
            source, target = fields[0], fields[1]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        result.append((kind, source, target))
    return result


def repo_path(source: str) -> Path:
    return (ROOT / source).resolve()


def markdown_fences(text: str) -> list[tuple[str, str]]:
    return [(m.group(1).strip(), m.group(2)) for m in re.finditer(r"^```([^\n]*)\n(.*?)^```", text, re.S | re.M)]


# ---- Dockerfile ------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    logical, current = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current:
            keyword, _, rest = current.partition(" ")
            logical.append((keyword.upper(), rest.strip()))
        current = ""
    return logical


def read_env_instruction(rest: str, env: dict[str, str]) -> None:
    """Add the KEY=VALUE pairs of one ENV instruction to ``env``."""
    for token in shlex.split(rest):
        if "=" in token:
            key, value = token.split("=", 1)
            env[key] = value


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            read_env_instruction(rest, env)
    return env


def expand_build_vars(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), m.group(0)), text)


def dockerfile_copies() -> list[tuple[list[str], str]]:
    """(sources, absolute destination) per COPY/ADD from the build context."""
    env: dict[str, str] = {}
    workdir = "/"
    copies = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            read_env_instruction(rest, env)
        elif keyword == "WORKDIR":
            workdir = str(PurePosixPath(workdir) / expand_build_vars(rest, env))
        elif keyword in ("COPY", "ADD"):
            args = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
            if any(a.startswith("--from") for a in args):
                continue
            args = [a for a in args if not a.startswith("--")]
            *sources, dest = args
            dest = expand_build_vars(dest, env)
            absolute = str(PurePosixPath(workdir) / dest)
            if dest.endswith("/") or dest in (".", "./"):
                absolute += "/"
            copies.append((sources, absolute))
    return copies


def image_paths() -> dict[str, Path]:
    """Container path -> repo path for what the Dockerfile copies in (directories end in /)."""
    mapping: dict[str, Path] = {}
    for sources, dest in dockerfile_copies():
        for source in sources:
            for match in sorted(glob.glob(str(ROOT / source))):
                path = Path(match)
                if path.is_dir():
                    mapping[dest.rstrip("/") + "/"] = path
                elif dest.endswith("/"):
                    mapping[dest + path.name] = path
                else:
                    mapping[dest] = path
    return mapping


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def dockerignored(rel: str) -> bool:
    """Docker's rule, simplified: the last matching pattern wins; a path is excluded
    when it or one of its parent directories is."""
    parts = PurePosixPath(rel).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in dockerignore_patterns():
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        variants = {pattern, pattern.replace("**/", "")}
        if any(fnmatch.fnmatchcase(c, v) for c in candidates for v in variants):
            excluded = not negate
    return excluded


# ---- fixtures --------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="module")
def deploy_md() -> str:
    return DEPLOY_MD.read_text(encoding="utf-8")


def resolve_in_container(service: dict, container_path: str) -> Path | None:
    """The repo file that appears at container_path: a bind mount first (it wins), else the image."""
    for kind, source, target in volume_entries(service):
        if kind != "bind":
            continue
        if container_path == target:
            return repo_path(source)
        if container_path.startswith(target.rstrip("/") + "/"):
            return repo_path(source) / container_path[len(target.rstrip("/")) + 1 :]
    mapping = image_paths()
    if container_path in mapping:
        return mapping[container_path]
    for dest, source in mapping.items():
        if dest.endswith("/") and container_path.startswith(dest):
            return source / container_path[len(dest) :]
    return None


def required_env_names() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "event_ingest").rglob("*.py"):
        if any(part in ENV_SCAN_EXCLUDE for part in path.relative_to(ROOT / "event_ingest").parts):
            continue
        names.update(
            n for n in ENV_NAME_RE.findall(path.read_text(encoding="utf-8")) if not n.startswith(TEST_ONLY_ENV_PREFIX)
        )
    instance = (ROOT / "deploy" / "dagster.yaml").read_text(encoding="utf-8")
    names.update(re.findall(r"\benv:\s*([A-Z_][A-Z0-9_]*)", instance))
    names.add("DAGSTER_HOME")
    return names


# ---- compose: structure ----------------------------------------------------


def test_compose_has_every_service(services):
    assert REQUIRED_SERVICES <= set(services), f"missing: {sorted(REQUIRED_SERVICES - set(services))}"


def test_app_services_build_from_an_existing_dockerfile(services):
    built = {}
    for name, service in services.items():
        build = service.get("build")
        if build is None:
            continue
        build = {"context": build} if isinstance(build, str) else build
        context = repo_path(interpolate(build.get("context", ".")))
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        built[interpolate(service.get("image", name))] = name
    for name in ("source1", "source2", "source3", "code", "webserver", "daemon"):
        service = services[name]
        assert "build" in service or interpolate(service.get("image", "")) in built, (
            f"{name}: neither built here nor using an image another service builds"
        )


def test_bind_mounts_exist_and_named_volumes_are_declared(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for kind, source, _target in volume_entries(service):
            if kind == "bind":
                assert repo_path(source).exists(), f"{name}: mounts {source} which is not in the repo"
                assert ROOT in repo_path(source).parents, f"{name}: mounts {source} from outside the repo"
            else:
                assert source in declared, f"{name}: volume {source!r} is not declared under top-level volumes"


def test_depends_on_references_existing_services_with_valid_conditions(services):
    for name, service in services.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown service {dependency!r}"
            assert condition in ("service_started", "service_healthy", "service_completed_successfully")
            if condition == "service_healthy":
                assert services[dependency].get("healthcheck"), (
                    f"{name} waits for {dependency} to be healthy, but it has no healthcheck"
                )
    for name in DAGSTER_SERVICES:
        deps = depends_on(services[name])
        assert deps.get("postgres") == "service_healthy", f"{name} must wait for a healthy postgres"
    for name in ("webserver", "daemon"):
        assert depends_on(services[name]).get("code") == "service_started"


def test_healthchecks(services):
    assert "pg_isready" in healthcheck_text(services["postgres"])
    assert "redis-cli ping" in healthcheck_text(services["redis"])
    code_port = option(as_argv(services["code"]["command"]), "-p", "--port")
    check = healthcheck_text(services["code"])
    assert "grpc-health-check" in check and re.search(rf"-p\s+{code_port}\b", check), check
    for source in MOCK_SHAPE:
        port = option(as_argv(services[source]["command"]), "--port")
        assert f":{port}/" in healthcheck_text(services[source])


def test_redis_runs_without_persistence_as_the_docs_say(services):
    """Nothing event-ingest keeps in Redis needs persistence (DEPLOY.md, README): no RDB saves, no AOF."""
    argv = as_argv(services["redis"]["command"])
    assert option(argv, "--save") == "" and option(argv, "--appendonly") == "no", argv


# ---- compose: what the containers are told ---------------------------------


def test_dagster_services_get_every_env_var_the_code_reads(services):
    required = required_env_names()
    assert {
        "EVENT_INGEST_DATABASE_URL",
        "EVENT_INGEST_REDIS_URL",
        "EVENT_INGEST_SOURCES",
        "EVENT_INGEST_DAGSTER_DATABASE_URL",
    } <= required  # the scan itself works
    for name in DAGSTER_SERVICES:
        env = environment(services[name])
        missing = sorted(n for n in required if not env.get(n))
        assert not missing, f"{name}: not set: {missing}"
    # Runs launched through the code server use the same instance as webserver and daemon.
    assert environment(services["code"]) == environment(services["webserver"]) == environment(services["daemon"])


def test_env_urls_point_at_compose_services(services):
    env = environment(services["code"])
    postgres_env = environment(services["postgres"])
    init_sql = "\n".join(
        resolve_in_container(services["postgres"], target).read_text(encoding="utf-8")
        for kind, _, target in volume_entries(services["postgres"])
        if kind == "bind" and target.startswith("/docker-entrypoint-initdb.d/")
    )
    databases = {postgres_env["POSTGRES_DB"]} | set(re.findall(r"CREATE DATABASE\s+(\w+)", init_sql, re.I))
    for key in ("EVENT_INGEST_DATABASE_URL", "EVENT_INGEST_DAGSTER_DATABASE_URL"):
        url = urlsplit(interpolate(env[key]))
        assert url.scheme.startswith("postgresql") and url.hostname in services, env[key]
        assert url.path.lstrip("/") in databases, f"{key}: database {url.path} is never created"
        assert url.username == interpolate(postgres_env["POSTGRES_USER"])
    events_db = urlsplit(interpolate(env["EVENT_INGEST_DATABASE_URL"])).path
    assert events_db != urlsplit(interpolate(env["EVENT_INGEST_DAGSTER_DATABASE_URL"])).path
    redis = urlsplit(interpolate(env["EVENT_INGEST_REDIS_URL"]))
    assert redis.scheme == "redis" and redis.hostname in services


def test_files_the_containers_are_told_about_exist(services):
    image_env = dockerfile_env()
    for name in DAGSTER_SERVICES:
        service = services[name]
        env = environment(service)
        assert env["DAGSTER_HOME"] == image_env["DAGSTER_HOME"]
        instance = resolve_in_container(service, env["DAGSTER_HOME"].rstrip("/") + "/dagster.yaml")
        assert instance == (ROOT / "deploy" / "dagster.yaml").resolve(), (
            f"{name}: $DAGSTER_HOME/dagster.yaml is {instance}"
        )
        sources = resolve_in_container(service, env["EVENT_INGEST_SOURCES"])
        assert sources is not None and sources.is_file(), f"{name}: {env['EVENT_INGEST_SOURCES']} is not provided"
        workspace = option(as_argv(service.get("command")), "-w", "--workspace")
        if workspace:
            assert resolve_in_container(service, workspace) == WORKSPACE_FILE.resolve(), (
                f"{name}: workspace {workspace} does not come from {WORKSPACE_FILE.relative_to(ROOT)}"
            )
    for name in ("webserver", "daemon"):
        assert option(as_argv(services[name]["command"]), "-w", "--workspace"), f"{name} needs -w"


def test_every_entry_point_loads_the_same_code_location():
    """workspace.yaml (`event-ingest dev`, `dagster dev -w`), pyproject's [tool.dagster] and [tool.dg] (`dagster dev`,
    `dg dev`), the image's CMD and compose's code server: one module, Dagster 1.13's definitions.py over defs/."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]
    project = pyproject["dg"]["project"]
    assert LOCAL_MODULE == "event_ingest.definitions"
    assert pyproject["dagster"]["module_name"] == project["code_location_target_module"] == LOCAL_MODULE
    defs_folder = ROOT / Path(*project["defs_module"].split("."))
    instances = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in defs_folder.glob("*/defs.yaml")]
    assert [i["type"] for i in instances] == ["event_ingest.EventSources"]


def test_workspace_points_at_the_code_server(services):
    workspace = yaml.safe_load(WORKSPACE_FILE.read_text(encoding="utf-8"))
    (entry,) = workspace["load_from"]
    grpc = entry["grpc_server"]
    argv = as_argv(services[grpc["host"]]["command"])
    assert grpc["host"] == "code"
    assert argv[:3] == ["dagster", "api", "grpc"]
    assert option(argv, "-h", "--host") == "0.0.0.0"
    assert str(grpc["port"]) == option(argv, "-p", "--port")
    assert option(argv, "-m", "--module-name") == LOCAL_MODULE
    assert grpc["location_name"] == option(argv, "--location-name") == "event_ingest"


def test_sources_file_matches_the_mock_source_services(services):
    path = resolve_in_container(services["code"], environment(services["code"])["EVENT_INGEST_SOURCES"])
    sources = load_sources(path)  # the real loader and validator
    assert {s.name for s in sources} == set(MOCK_SHAPE)
    for source in sources:
        url = urlsplit(source.url)
        assert url.hostname in services, f"{source.name}: host {url.hostname} is not a compose service"
        argv = as_argv(services[url.hostname]["command"])
        assert argv[:2] == ["event-ingest", "mock-source"]
        assert option(argv, "--name") == source.name
        assert option(argv, "--port") == str(url.port)


def test_mock_sources_listen_on_all_interfaces_with_the_original_shape(services):
    mocks = {n: as_argv(s.get("command")) for n, s in services.items() if "mock-source" in as_argv(s.get("command"))}
    assert set(mocks) == set(MOCK_SHAPE)
    for name, argv in mocks.items():
        assert option(argv, "--host") == "0.0.0.0", f"{name}: binds 127.0.0.1 inside its container"
        assert (option(argv, "--seed-batch"), option(argv, "--error-rate")) == MOCK_SHAPE[name]


def test_webserver_and_daemon_commands(services):
    assert as_argv(services["webserver"]["command"])[:1] == ["dagster-webserver"]
    assert option(as_argv(services["webserver"]["command"]), "-h", "--host") == "0.0.0.0"
    assert any(interpolate(str(p)).endswith(":3000") for p in services["webserver"].get("ports", []))
    assert as_argv(services["daemon"]["command"])[:2] == ["dagster-daemon", "run"]


# ---- secrets ---------------------------------------------------------------


def assert_no_literal_secrets(node, where: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, (str, int, float)) and SECRET_KEY_RE.search(str(key)):
                assert only_substitution(str(value)), f"{where}: {key} holds a literal value"
            assert_no_literal_secrets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            if isinstance(item, str) and "=" in item and SECRET_KEY_RE.search(item.split("=", 1)[0]):
                assert only_substitution(item.split("=", 1)[1]), f"{where}[{index}]: literal secret"
            assert_no_literal_secrets(item, f"{where}[{index}]")
    elif isinstance(node, str):
        # Mask each ${...} first: its text (an error message) may hold spaces, ':' or '@'.
        substitutions: list[str] = []

        def mask(match: re.Match) -> str:
            substitutions.append(match.group(0))
            return f"\x00{len(substitutions) - 1}\x00"

        for password in URL_CREDENTIALS_RE.findall(SUBSTITUTION_RE.sub(mask, node)):
            placeholder = re.fullmatch(r"\x00(\d+)\x00", password)
            assert placeholder and only_substitution(substitutions[int(placeholder.group(1))]), (
                f"{where}: URL with a literal password"
            )


@pytest.mark.parametrize(
    "bad",
    [
        {"POSTGRES_PASSWORD": "hunter2"},
        {"POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:-hunter2}"},
        ["POSTGRES_PASSWORD=hunter2"],
        {"url": "postgresql://u:hunter2@db:5432/x"},
        {"url": "postgresql://${U:-u}:${P:-hunter2}@db:5432/x"},
        {"url": "redis://:hunter2@redis:6379/0"},
    ],
)
def test_secret_check_catches_literals(bad):
    with pytest.raises(AssertionError):
        assert_no_literal_secrets(bad, "sample")


def test_secret_check_accepts_substitutions():
    assert_no_literal_secrets(
        {
            "POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?set it in .env}",
            "url": "postgresql://${U:-u}:${P:?set P: the password @ db}@db:5432/x",
            "plain": "redis://redis:6379/0",
        },
        "sample",
    )


def test_no_literal_passwords(compose, deploy_md):
    assert_no_literal_secrets(compose, "docker-compose.yml")
    for path in (ROOT / "deploy").glob("*.y*ml"):
        assert_no_literal_secrets(yaml.safe_load(path.read_text(encoding="utf-8")), str(path.relative_to(ROOT)))
    for index, (lang, body) in enumerate(markdown_fences(deploy_md)):
        if lang == "yaml":
            assert_no_literal_secrets(yaml.safe_load(body), f"DEPLOY.md yaml block {index}")
    # The password has no default: compose refuses to start without one.
    assert "${POSTGRES_PASSWORD:?" in COMPOSE_FILE.read_text(encoding="utf-8")
    assert ".env" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


# ---- Dockerfile ------------------------------------------------------------


def test_dockerfile_statically():
    instructions = dockerfile_instructions()
    keywords = [k for k, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert "CMD" in keywords or "ENTRYPOINT" in keywords
    cmd = json.loads(next(rest for k, rest in reversed(instructions) if k == "CMD"))
    assert cmd[:3] == ["dagster", "api", "grpc"] and option(cmd, "-m") == LOCAL_MODULE
    assert option(cmd, "-h") == "0.0.0.0"
    users = [rest for k, rest in instructions if k == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    exposed = {p for k, rest in instructions if k == "EXPOSE" for p in rest.split()}
    assert {"3000", "4000"} <= exposed
    assert dockerfile_env()["DAGSTER_HOME"] == "/opt/dagster/dagster_home"
    assert image_paths()["/opt/dagster/dagster_home/dagster.yaml"] == ROOT / "deploy" / "dagster.yaml"
    assert any(k == "RUN" and "pip install" in rest and re.search(r"\s\.(\s|$)", rest) for k, rest in instructions)


def test_dockerfile_copies_exist_and_are_not_dockerignored():
    for sources, dest in dockerfile_copies():
        matched_any = False
        for source in sources:
            matches = glob.glob(str(ROOT / source))
            if not glob.has_magic(source):
                assert matches, f"COPY {source}: not in the repo"
            matched_any = matched_any or bool(matches)
            for match in matches:
                rel = Path(match).relative_to(ROOT).as_posix()
                assert not dockerignored(rel), f"COPY {rel}: excluded by .dockerignore"
        # A pattern that matches nothing is fine only beside a source that exists.
        assert matched_any, f"COPY {sources} -> {dest}: copies nothing"


def test_dockerignore_keeps_local_state_and_secrets_out():
    for rel in (".git", ".venv", ".event-ingest", ".env", "event_ingest/__pycache__", ".pytest_cache"):
        assert dockerignored(rel), f".dockerignore does not exclude {rel}"
    for rel in (
        "pyproject.toml",
        "event_ingest/cli/main.py",
        "event_ingest/defs/event_sources/defs.yaml",
        "deploy/dagster.yaml",
        "deploy/workspace.docker.yaml",
    ):
        assert not dockerignored(rel), f".dockerignore excludes {rel}, which the image needs"


# ---- DEPLOY.md -------------------------------------------------------------

GLOBAL_VALUE_OPTS = {"-p", "--project-name", "-f", "--file", "--env-file", "--profile", "--project-directory"}
SUBCOMMAND_VALUE_OPTS = {
    "--scale",
    "--tail",
    "-u",
    "--user",
    "-e",
    "--env",
    "-w",
    "--workdir",
    "-t",
    "--timeout",
    "--index",
    "--since",
    "--until",
}
SERVICE_ARG_SUBCOMMANDS = {"up", "logs", "restart", "stop", "start", "ps", "build", "pull", "create", "rm", "kill"}
FIRST_ARG_SUBCOMMANDS = {"exec", "run"}


def compose_command_services(line: str) -> list[str]:
    """Service names a `docker compose ...` command line names."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return []
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):
        tokens.pop(0)  # VAR=value prefixes
    if tokens[:2] != ["docker", "compose"]:
        return []
    tokens, i = tokens[2:], 0
    while i < len(tokens) and tokens[i].startswith("-"):
        i += 2 if tokens[i] in GLOBAL_VALUE_OPTS else 1
    if i >= len(tokens):
        return []
    subcommand, args = tokens[i], tokens[i + 1 :]
    positional, j = [], 0
    while j < len(args):
        if args[j].startswith("-"):
            j += 2 if args[j] in SUBCOMMAND_VALUE_OPTS else 1
            continue
        positional.append(args[j])
        j += 1
    if subcommand in SERVICE_ARG_SUBCOMMANDS:
        return positional
    if subcommand in FIRST_ARG_SUBCOMMANDS:
        return positional[:1]
    return []


def test_compose_command_parser():
    assert compose_command_services(
        "DAGSTER_WEBSERVER_PORT=3100 docker compose -p other -f a.yml -f b.yml up -d --no-deps code daemon"
    ) == ["code", "daemon"]
    assert compose_command_services("docker compose logs -f --tail 50 code  # comment") == ["code"]
    assert compose_command_services("docker compose exec -u root postgres psql -U x") == ["postgres"]
    assert compose_command_services("docker compose down -v") == []
    assert compose_command_services("pip install .") == []


def test_every_service_deploy_md_names_exists(services, deploy_md):
    named: set[str] = set()
    # The services table: first cell of each row lists backticked service names.
    table = deploy_md.split("| service |", 1)[1].split("\n\n", 1)[0]
    for row in table.splitlines()[2:]:
        named.update(re.findall(r"`([a-z0-9_-]+)`", row.split("|")[1]))
    assert REQUIRED_SERVICES <= named, f"the table misses {sorted(REQUIRED_SERVICES - named)}"
    # Every docker compose command, in code blocks and inline code.
    commands = [
        line for lang, body in markdown_fences(deploy_md) if lang in ("bash", "sh", "") for line in body.splitlines()
    ]
    commands += re.findall(r"`(docker compose [^`]+)`", deploy_md)
    mentioned = [s for line in commands for s in compose_command_services(line)]
    assert "code" in mentioned  # the parser found the commands
    named.update(mentioned)
    # Every override snippet.
    for lang, body in markdown_fences(deploy_md):
        document = yaml.safe_load(body) if lang == "yaml" else None
        if isinstance(document, dict) and "services" in document:
            named.update(document["services"])
    unknown = sorted(named - set(services))
    assert not unknown, f"DEPLOY.md names services that docker-compose.yml does not have: {unknown}"


def test_deploy_md_snippets_match_the_stack(compose, deploy_md):
    assert "docker compose up -d --build" in deploy_md and "http://localhost:3000" in deploy_md
    blocks = [yaml.safe_load(body) for lang, body in markdown_fences(deploy_md) if lang == "yaml"]
    launchers = {
        b["run_launcher"]["class"]: b["run_launcher"] for b in blocks if isinstance(b, dict) and "run_launcher" in b
    }
    assert set(launchers) == {"DockerRunLauncher", "K8sRunLauncher"}
    docker = launchers["DockerRunLauncher"]["config"]
    forwarded = {v.split("=", 1)[0] for v in docker["env_vars"]}
    assert required_env_names() - {"DAGSTER_HOME"} <= forwarded  # DAGSTER_HOME is baked into the image
    assert docker["network"] == f"{compose['name']}_default"
    # The pins quoted in the doc are the ones the locks install (the image: requirements/product.lock).
    lock = (ROOT / "requirements" / "product.lock").read_text(encoding="utf-8")
    core = re.search(r"^dagster==([0-9.]+)", lock, re.M).group(1)
    library = re.search(r"^dagster-postgres==([0-9.]+)", lock, re.M).group(1)
    for pin in (f"dagster=={core}", f"dagster-docker=={library}", f"dagster-k8s=={library}"):
        assert pin in deploy_md, f"DEPLOY.md should quote {pin}"
    # The override's shared network is the one the stack creates.
    override = next(b for b in blocks if isinstance(b, dict) and "services" in b)
    assert set(override["networks"]) <= set(compose["networks"])
    assert interpolate(compose["networks"]["shared"]["name"]) in deploy_md


# ---- docker compose config (only parses; needs the compose plugin, not an engine) ----


def compose_cli() -> list[str] | None:
    if shutil.which("docker") is None:
        return None
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
    return ["docker", "compose"] if probe.returncode == 0 else None


def test_docker_compose_config(tmp_path, deploy_md):
    cli = compose_cli()
    if cli is None:
        pytest.skip("the `docker compose` plugin is not installed")
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("")
    base = [*cli, "--project-directory", str(ROOT), "--env-file", str(empty_env), "-f", str(COMPOSE_FILE)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "COMPOSE_"))}

    refused = subprocess.run([*base, "config", "--quiet"], capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode != 0 and "POSTGRES_PASSWORD" in refused.stderr

    env["POSTGRES_PASSWORD"] = "placeholder-for-config-check"
    result = subprocess.run([*base, "config", "--format", "json"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)
    assert REQUIRED_SERVICES <= set(rendered["services"])

    override = next(body for lang, body in markdown_fences(deploy_md) if lang == "yaml" and "services:" in body)
    (tmp_path / "compose.other.yaml").write_text(override)
    merged = subprocess.run(
        [*base, "-f", str(tmp_path / "compose.other.yaml"), "-p", "other", "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert merged.returncode == 0, merged.stderr
    code = json.loads(merged.stdout)["services"]["code"]
    assert "shared" in code["networks"]
    assert code["environment"]["EVENT_INGEST_DAGSTER_DATABASE_URL"].endswith("/dagster_other")
