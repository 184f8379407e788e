"""Prometheus config, alert rules (with promtool's own unit tests) and the Grafana dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .tooling import ROOT, Run, Tools

PROM = ROOT / "infra" / "prometheus"
EXPORTED = {
    "cmg_requests_total",
    "cmg_request_duration_seconds",
    "cmg_upstream_duration_seconds",
    "cmg_upstream_errors_total",
    "cmg_rq_queue_depth",
    "cmg_outbox_backlog",
    "cmg_outbox_oldest_age_seconds",
    "cmg_ratelimit_fail_open_total",
}
ALERTS = {
    "CMGHighErrorRate",
    "CMGHighLatencyP95",
    "CMGUpstreamFailures",
    "CMGQueueBacklog",
    "CMGOutboxStale",
    "CMGRateLimitFailOpen",
}


def _metrics(expr: str) -> set[str]:
    """cmg_* metric names an expression reads, histogram series folded to their family."""
    names = set(re.findall(r"\bcmg_[a-z0-9_]+", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", n) if n not in EXPORTED else n for n in names}


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_scrape_config(tools: Tools, run: Run) -> None:
    result = run([tools.path("promtool"), "check", "config", str(PROM / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules(tools: Tools, run: Run) -> None:
    result = run([tools.path("promtool"), "check", "rules", str(PROM / "alerts.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_fire_on_synthetic_series(tools: Tools, run: Run) -> None:
    result = run([tools.path("promtool"), "test", "rules", "alerts.test.yml"], cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_operational_alert_is_defined(rules: list[dict[str, Any]]) -> None:
    names = {rule["alert"] for rule in rules}
    assert names >= ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("page", "warn"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_alerts_read_only_metrics_the_app_exports(rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        if rule["alert"] == "CMGTargetDown":
            continue
        used = _metrics(rule["expr"])
        assert used, f"{rule['alert']} reads no cmg_ metric"
        assert used <= EXPORTED, f"{rule['alert']} reads {used - EXPORTED}"


def test_scrape_config_covers_gateway_replicas_and_workers() -> None:
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    gateway = [t for s in jobs["cmg-gateway"]["static_configs"] for t in s["targets"]]
    worker = [t for s in jobs["cmg-worker"]["static_configs"] for t in s["targets"]]
    assert gateway == ["gateway-1:8080", "gateway-2:8080"]
    assert worker == ["worker:9100"]
    assert config["rule_files"] == ["alerts.yml"]


def test_grafana_dashboard_panels_query_exported_metrics() -> None:
    dashboard = json.loads((ROOT / "infra" / "grafana" / "gateway.json").read_text())
    panels = dashboard["panels"]
    assert len(panels) >= 8
    assert len({p["id"] for p in panels}) == len(panels)
    covered: set[str] = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = _metrics(target["expr"])
            assert used, f"panel {panel['title']!r} queries no cmg_ metric"
            assert used <= EXPORTED, f"panel {panel['title']!r} queries {used - EXPORTED}"
            covered |= used
    assert covered == EXPORTED, f"no panel for {EXPORTED - covered}"


def test_metric_name_check_catches_unknown_names() -> None:
    assert _metrics("rate(cmg_request_duration_seconds_bucket[5m])") <= EXPORTED
    assert not _metrics("sum(rate(cmg_requests_totl[5m]))") <= EXPORTED
    assert Path(PROM / "alerts.test.yml").is_file()
