"""Async mode, the sync round deadline and speed.* in the composed config: one-line errors."""

from __future__ import annotations

import pytest

from fedray.app.cli import compose
from fedray.app.spec import validate
from fedray.core.errors import ConfigError


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["algorithm=fedasync"], "algorithm=fedasync runs only in mode=async.*add mode=async"),
        (["algorithm=fedbuff"], "algorithm=fedbuff runs only in mode=async"),
        (["mode=async"], "algorithm=fedavg runs only in mode=sync.*fedasync or fedbuff"),
        (["mode=async", "algorithm=fedadam"], "algorithm=fedadam runs only in mode=sync"),
        (["mode.name=semi"], "mode.name='semi' is unknown"),
        (["mode.round_deadline_s=-1"], r"mode.round_deadline_s=-1.0 must be >= 0"),
        (
            ["mode=async", "algorithm=fedbuff", "mode.round_deadline_s=5"],
            "round_deadline_s applies to mode=sync only",
        ),
        (["mode=async", "algorithm=fedbuff", "mode.max_concurrency=0"], "max_concurrency=0"),
        (["mode=async", "algorithm=fedasync", "mode.max_staleness=-1"], "max_staleness=-1"),
        (["speed.kind=gamma"], "speed.kind='gamma' is unknown"),
        (["speed.slowdown=0.5"], "speed.slowdown=0.5 must be >= 1"),
        (["speed.slow_fraction=1.5"], r"speed.slow_fraction=1.5 must be in \[0, 1\]"),
        (["speed.sigma=-1"], "speed.sigma=-1.0 must be >= 0"),
        (
            ["mode=async", "algorithm=fedbuff", "algorithm.server.name=krum"],
            "algorithm.server.name='krum' is not a server optimizer",
        ),
    ],
)
def test_bad_async_settings_are_one_line_config_errors(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        validate(compose(overrides))
    assert "\n" not in str(info.value)


def test_async_preset_composes_with_both_algorithms_and_a_server_optimizer() -> None:
    cfg = compose(
        [
            "mode=async",
            "algorithm=fedbuff",
            "algorithm.server={name:fedadam,server_lr:0.01}",
            "mode.max_staleness=3",
            "speed.kind=lognormal",
        ]
    )
    validate(cfg)
    assert (cfg.mode.name, cfg.mode.max_concurrency, cfg.mode.max_staleness) == ("async", 10, 3)
    assert cfg.algorithm.server.name == "fedadam"
    validate(compose(["mode=async", "algorithm=fedasync", "algorithm.staleness=hinge"]))
