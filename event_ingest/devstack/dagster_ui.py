"""The Dagster webserver's GraphQL API, as the dev stack uses it: is the UI up with the code
loaded, and the runs an earlier session left "running"."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

UI_READY_TIMEOUT_S = 180.0

WORKSPACE_QUERY = """{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
RUNS_QUERY = """query Runs($filter: RunsFilter) { runsOrError(filter: $filter) {
    ... on Runs { results { runId status creationTime } } ... on PythonError { message } } }"""
TERMINATE_RUNS_MUTATION = """mutation Terminate($runIds: [String!]!, $policy: TerminateRunPolicy) {
    terminateRuns(runIds: $runIds, terminatePolicy: $policy) { __typename } }"""


class DagsterUI:
    """GraphQL calls to the webserver at `url`; warnings go to `say`."""

    def __init__(self, url: str, say: Callable[[str], None]) -> None:
        self.url = url
        self._say = say

    def graphql(self, query: str, variables: dict[str, Any] | None = None, timeout: float = 5) -> dict[str, Any]:
        """POST a query to the Dagster webserver; its "data" (raises on transport or query errors)."""
        import httpx

        r = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout)
        r.raise_for_status()
        body = r.json()
        if body.get("errors"):
            raise ValueError(f"GraphQL errors: {body['errors']}")
        data: dict[str, Any] = body["data"]
        return data

    def poll_ui(self) -> bool:
        """The webserver answers and has loaded the code location."""
        import httpx

        try:
            entries = self.graphql(WORKSPACE_QUERY, timeout=2)["workspaceOrError"]["locationEntries"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return False
        if not entries or any(e["loadStatus"] != "LOADED" for e in entries):
            return False
        for e in entries:
            err = e.get("locationOrLoadError") or {}
            if err.get("__typename") == "PythonError":
                first = (err.get("message") or "").strip().splitlines()[:1]
                self._say(f"WARNING: Dagster could not load code location {e['name']}: {' '.join(first)}")
        return True

    def runs(self, statuses: list[str], **created: float) -> list[dict[str, Any]]:
        """Runs in `statuses`, optionally createdBefore/createdAfter an epoch time."""
        data = self.graphql(RUNS_QUERY, {"filter": {"statuses": statuses, **created}})["runsOrError"]
        results: list[dict[str, Any]] = data.get("results", [])
        return results

    def terminate_runs(self, run_ids: list[str], policy: str) -> None:
        self.graphql(TERMINATE_RUNS_MUTATION, {"runIds": run_ids, "policy": policy}, timeout=30)

    def cancel_stale_runs(self, created_before: float) -> None:
        """Runs that an earlier session left STARTING/STARTED: their workers died with it (a hard
        kill, or a stop that could not wait for them). Dagster's default run launcher cannot
        health-check run workers, so these would stay "running" for ever and the sensors, which
        wait for a partition's active run to end, would never drain those sources again.
        Call it only when the Dagster storage is ours (embedded) and we hold the state dir's
        lock: then no run created before this start (`created_before`) can be alive."""
        import httpx

        try:
            stale = self.runs(["STARTING", "STARTED", "CANCELING"], createdBefore=created_before)
            if stale:
                self.terminate_runs([r["runId"] for r in stale], "MARK_AS_CANCELED_IMMEDIATELY")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            self._say(f"WARNING: could not check for runs left over by an earlier session: {exc}")
            return
        if stale:
            self._say(
                f"marked {len(stale)} run(s) an earlier session left running as canceled: "
                f"{', '.join(r['runId'][:8] for r in stale)}"
            )
