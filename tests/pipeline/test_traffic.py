"""Byte accounting: per-round figures, totals that survive a checkpoint, ratios, client spread."""

from __future__ import annotations

import pytest

from fedray.app.cli import compose
from fedray.app.spec import build_spec
from fedray.pipeline import Pipeline
from fedray.pipeline.traffic import Traffic


def test_round_figures_totals_and_ratios() -> None:
    t = Traffic(model_bytes=4000)
    up = [(100, 400), (120, 400), (80, 400), (100, 400)]
    m = t.record(up, [(200, 400)] * 5)
    assert (m["bytes_up"], m["bytes_down"]) == (400, 1000)
    assert (m["bytes_up_total"], m["bytes_down_total"]) == (400, 1000)
    assert m["compression_up"] == 1600 / 400 and m["compression_down"] == 2000 / 1000
    assert m["compression_up_vs_model"] == 4 * 4000 / 400
    assert m["compression_down_vs_model"] == 5 * 4000 / 1000
    assert [m[f"bytes_up_client_{q}"] for q in ("min", "p50", "p90", "max")] == [80, 100, 100, 120]
    m = t.record([(50, 400)], [])
    assert (m["bytes_up_total"], m["bytes_down_total"]) == (450, 1000)
    assert "compression_down" not in m and m["bytes_down"] == 0


def test_unknown_model_size_gives_no_model_ratio() -> None:
    m = Traffic().record([(10, 40)], [(40, 40)])
    assert "compression_up_vs_model" not in m and m["compression_up"] == 4.0


def test_totals_are_pipeline_state() -> None:
    pipeline = Pipeline.from_spec(build_spec(compose(["tracking=none"])))
    pipeline.traffic.record([(7, 28)], [(9, 36)])
    state = pipeline.state_dict()
    assert state["traffic"] == {"up_total": 7, "down_total": 9}
    again = Pipeline.from_spec(build_spec(compose(["tracking=none"])))
    again.load_state_dict(state)
    assert again.traffic.record([], [])["bytes_up_total"] == 7
    again.load_state_dict({"privacy": state["privacy"]})  # a checkpoint from before the totals
    with pytest.raises(KeyError, match="unexpected keys"):
        again.load_state_dict({**state, "codec": {}})
    with pytest.raises(KeyError, match=r"Traffic\.load_state_dict"):
        again.load_state_dict({**state, "traffic": {"up_total": 1}})


def test_run_summary_line_weighs_rounds_by_bytes() -> None:
    from fedray.app.run import traffic_summary

    rows = [
        {"bytes_up": 100.0, "bytes_up_total": 100.0, "bytes_down_total": 4e6},
        {"bytes_up": 300.0, "bytes_up_total": 400.0, "bytes_down_total": 8e6},
    ]
    assert traffic_summary(rows) == "bytes: 0.000 MB up, 8.000 MB down in all"
    rows[0].update(compression_up=2.0, compression_up_vs_model=100.0)
    rows[1].update(compression_up=4.0, compression_up_vs_model=400.0)
    line = traffic_summary(rows)
    assert line.endswith(
        "; updates 3.5x smaller than the same tensors as float32, "
        "325.0x smaller than the full model as float32"
    )
    assert traffic_summary([]) is None
