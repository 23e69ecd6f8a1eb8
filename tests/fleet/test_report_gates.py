"""The offline HTML report and the rollout stage gate, over the simulated fleet's real windows."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from image.cli import cli
from image.fleet.gates import stage_gate
from image.fleet.inventory import inventory
from image.fleet.store import Store
from tests.fleet.simulate import START


@pytest.fixture
def store(fleet: list[dict[str, object]], tmp_path: Path) -> Store:
    s = Store.open(str(tmp_path / "fleet.db"))
    for m in fleet:
        s.insert(dict(m))
    return s


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_report_is_one_offline_page_with_charts_and_the_flags(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["fleet", "report", "--db", store.url, "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    parser = _Collect()
    parser.feed(page)
    tags = parser.tags
    assert not [t for t, a in tags if t in ("script", "link", "img", "iframe")]  # nothing to fetch
    assert not re.search(r"(src|href)=['\"]?https?:", page)
    charts = [a for t, a in tags if t == "svg"]
    assert len(charts) >= 4 and all(a.get("aria-label") for a in charts)
    lines = [a for t, a in tags if t == "polyline" and a.get("class") == "series"]
    assert lines and all(len((a["points"] or "").split()) >= 2 for a in lines)
    assert len([a for t, a in tags if t == "rect" and a.get("class") == "bar"]) >= 4
    anomalies = page.split("id='anomalies'")[1].split("</table>")[0]
    assert {"dev-007", "dev-042", "dev-077"} == set(re.findall(r"dev-\d{3}", anomalies))
    assert page.count("<tr>") >= 100 + 1  # the inventory lists every device


def test_status_lists_the_inventory_with_filters(store: Store) -> None:
    result = CliRunner().invoke(
        cli, ["fleet", "status", "--db", store.url, "--site", "site-1", "--json", "--no-anomalies"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 25 and all('"site": "site-1"' in x for x in lines)
    table = CliRunner().invoke(cli, ["fleet", "status", "--db", store.url, "--target", "x"])
    assert table.exit_code == 0 and "dev-000" not in table.output  # no device of target x
    full = CliRunner().invoke(cli, ["fleet", "status", "--db", store.url])
    assert "dev-099" in full.output and "anomaly" in full.output and "dev-077" in full.output
    # The simulated windows end at START + 40 s: stale 100 s later, not 10 s later.
    assert len(inventory(store, stale_after_s=60, now=START + 140)) == 100
    assert inventory(store, stale_after_s=60, now=START + 50) == []


def event(device: str, kind: str, ts: float, version: str = "2.0.0") -> dict[str, object]:
    return {
        "type": "event",
        "id": f"{device}:{kind}:{version}",
        "version": version,
        "device": device,
        "site": "site-0",
        "target": "generic-x86-64",
        "kind": kind,
        "reason": "health gate",
        "alert": kind == "update.rolled-back",
        "ts": ts,
    }


def test_stage_gate_refuses_before_commits_on_rollbacks_and_on_anomalies(store: Store) -> None:
    stage = [f"dev-{i:03d}" for i in range(10, 20)]
    verdict = stage_gate(store, stage, since=START)
    assert not verdict.advance and "10 of 10 devices have not committed" in verdict.reasons[0]
    for d in stage:
        store.insert(event(d, "update.committed", START + 1))
    verdict = stage_gate(store, stage, since=START)
    assert verdict.advance and verdict.committed == 10 and not verdict.reasons
    store.insert(event("dev-011", "update.rolled-back", START + 2))
    verdict = stage_gate(store, stage, since=START, max_rollback_rate=0.05, halt_rollback_rate=0.5)
    assert not verdict.advance and not verdict.halt and verdict.rolled_back == 1
    assert any("rollback rate 10.0%" in r for r in verdict.reasons)
    hot_stage = ["dev-076", "dev-077"]
    for d in hot_stage:
        store.insert(event(d, "update.committed", START + 1))
    verdict = stage_gate(store, hot_stage, since=START)
    assert not verdict.advance and any(
        "dev-077" in r and "temp_max_c" in r for r in verdict.reasons
    )


def test_stage_gate_counts_only_the_releases_own_outcomes(store: Store) -> None:
    """A hotfix rolled out to the same devices at the same time is another release's outcome:
    its commits do not commit this stage and its rollbacks do not halt it."""
    stage = [f"dev-{i:03d}" for i in range(20, 30)]
    for d in stage:
        store.insert(event(d, "update.committed", START + 1, version="2.0.1"))
    for d in stage[:5]:
        store.insert(event(d, "update.rolled-back", START + 2, version="2.0.1"))
    verdict = stage_gate(store, stage, since=START, version="2.0.0")
    assert verdict.committed == 0 and verdict.rolled_back == 0 and not verdict.halt
    assert "10 of 10 devices have not committed" in verdict.reasons[0]
    for d in stage:
        store.insert(event(d, "update.committed", START + 3))
    verdict = stage_gate(store, stage, since=START, version="2.0.0")
    assert verdict.advance and verdict.committed == 10
    hotfix = stage_gate(store, stage, since=START, version="2.0.1")
    assert hotfix.rolled_back == 5 and hotfix.halt
