"""The console's pure helpers: percentiles, form values, SVG bar geometry."""

from __future__ import annotations

from gateway.console.charts import HEIGHT, WIDTH, bars
from gateway.console.pages import _p50_p95, _setting


def test_percentiles_never_cross() -> None:
    assert _p50_p95([1.0]) == (1.0, 1.0)
    assert _p50_p95([1.0, 7.0]) == (4.0, 7.0)
    values = [float(v) for v in range(1, 101)]
    assert _p50_p95(values) == (50.5, 95.0)


def test_form_values_become_setting_json() -> None:
    assert [_setting(v) for v in ("", "  ", "true", "false", "30", "12.5", "read")] == [
        None, None, True, False, 30, 12.5, "read"]  # fmt: skip


def test_bars_fill_the_chart_and_scale_to_the_top_value() -> None:
    chart = bars(["a", "b", "c"], [0.0, 5.0, 10.0], "t")
    assert chart.top == 10.0 and [b.height for b in chart.bars] == [0.0, HEIGHT / 2, HEIGHT]
    assert chart.bars[-1].x + chart.bars[-1].width <= WIDTH
    assert bars(["a"], [0.0], "empty").bars[0].height == 0.0  # no division by zero
