"""Cross-silo pieces that run without a cluster: label selectors, node checks, class lists,
the silo's own data config, and the config checks of `cluster.silos`."""

from __future__ import annotations

import pytest

from fedray.app.cli import compose
from fedray.app.spec import build_spec
from fedray.client.silo import check_silo_nodes, merge_label_names, selects, silo_data_config
from fedray.core.errors import ConfigError, DataError

SILOS = "cluster.silos=[{name:a,labels:{silo:a},path:$SILO_HOME/a.csv,clients:2,actors:1}]"


def _spec(*overrides: str):
    """The spec of a one-silo run; `overrides` replace the base's keys."""
    base = ["tracking=none", "cluster.address=auto", SILOS, "mode.clients_per_round=1"]
    keys = {o.split("=", 1)[0] for o in overrides}
    return build_spec(compose([*(b for b in base if b.split("=", 1)[0] not in keys), *overrides]))


def test_label_selector_values() -> None:
    node = {"silo": "a", "zone": "eu"}
    assert selects({"silo": "a"}, node) and not selects({"silo": "b"}, node)
    assert selects({"silo": "!b"}, node) and not selects({"silo": "!a"}, node)
    assert selects({"silo": "in(a,b)"}, node) and not selects({"silo": "!in(a, b)"}, node)
    assert not selects({"gpu": "a100"}, node)


def test_class_lists_merge_across_silos() -> None:
    assert merge_label_names([["0", "1"], ["0", "1", "2"], None]) == ["0", "1", "2"]
    assert merge_label_names([["farm", "sea"], ["city", "farm", "sea"]]) == [
        "city",
        "farm",
        "sea",
    ]
    assert merge_label_names([None, None]) is None


def test_silo_nodes_must_exist_with_cpus() -> None:
    spec = _spec("client.num_cpus=2")
    node = {"Alive": True, "Labels": {"silo": "a"}, "Resources": {"CPU": 2.0}}
    check_silo_nodes(spec, [node])
    with pytest.raises(DataError, match=r"no alive node carries the labels \{'silo': 'a'\}"):
        check_silo_nodes(spec, [{**node, "Alive": False}, {**node, "Labels": {"silo": "b"}}])
    with pytest.raises(DataError, match="need 2 CPUs but its nodes have 1"):
        check_silo_nodes(spec, [{**node, "Resources": {"CPU": 1.0}}])


def test_silo_paths_expand_on_the_silo_node(monkeypatch) -> None:
    spec = _spec("data=files", "partition.num_clients=9")
    monkeypatch.setenv("SILO_HOME", "/site/data")
    data, partition = silo_data_config(spec, 0)
    assert data.path == "/site/data/a.csv" and data.name == "files"
    assert partition.num_clients == 2  # the silo's clients, not partition.num_clients


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["cluster.address=null"], "cluster.silos needs an existing cluster"),
        (["client.num_actors=2"], "client.num_actors does not apply with cluster.silos"),
        (["mode.clients_per_round=3"], "exceeds the 2 clients of cluster.silos"),
        (["cluster.silos=[{name:a,clients:1}]"], "cluster.silos[0].labels is empty"),
        (
            ["cluster.silos=[{name:a,labels:{s:a}},{name:a,labels:{s:b}}]"],
            "cluster.silos[1].name='a' is used twice",
        ),
        (["cluster.silos=[{name:a,labels:{s:a},actors:0}]"], "must be >= 1"),
    ],
)
def test_bad_silo_settings_are_one_line(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        _spec(*overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)
    if needle.startswith("exceeds"):
        assert str(err.value).startswith("mode.clients_per_round=3")


def test_files_silos_need_a_path_each() -> None:
    with pytest.raises(ConfigError, match=r"cluster.silos\[0\].path is required with data=files"):
        _spec("data=files", "cluster.silos=[{name:a,labels:{silo:a}}]")


def test_a_ray_without_label_selectors_is_one_line(monkeypatch) -> None:
    import ray

    from fedray.client import silo

    node = {"Alive": True, "Labels": {"silo": "a"}, "Resources": {"CPU": 4.0}}
    monkeypatch.setattr(ray, "nodes", lambda: [node])

    class OldActorClass:
        def options(self, **options):
            if "label_selector" in options:
                raise ValueError("Invalid option keyword label_selector for actors.")

    monkeypatch.setattr(ray, "remote", lambda cls: OldActorClass())
    with pytest.raises(ConfigError, match=r"refuses \(Invalid option keyword label_selector"):
        silo.start_silos(_spec())
