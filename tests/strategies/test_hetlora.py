"""Client groups (HetLoRA ranks and layers, architectures): assignment, trained components,
per-component averaging, and the client rule that trains a truncated adapter."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.core import registry
from fedray.core.config import ClientGroupConfig, FedrayConfig, LoraConfig, ModelConfig
from fedray.core.types import Contribution
from fedray.models import groups
from fedray.strategies._groups import ClientGroups, grouped_mean
from fedray.strategies.base import ServerCompute

A3 = "base_model.model.bert.encoder.layer.3.attention.self.query.lora_A.weight"
B3 = "base_model.model.bert.encoder.layer.3.attention.self.query.lora_B.weight"
A5 = "base_model.model.bert.encoder.layer.5.attention.self.query.lora_A.weight"
HEAD = "base_model.model.classifier.modules_to_save.default.weight"


def _model(*gs: ClientGroupConfig, r: int = 8) -> ModelConfig:
    return ModelConfig(lora=LoraConfig(r=r, layers=[3, 4, 5]), groups=list(gs))


def test_assignment_is_seeded_and_follows_the_shares() -> None:
    model = _model(ClientGroupConfig(share=0.25, r=2), ClientGroupConfig(share=0.75, r=8))
    gs = groups.resolve(model)
    a = groups.assign(gs, 40, seed=0)
    assert np.bincount(a).tolist() == [10, 30]
    assert np.array_equal(a, groups.assign(gs, 40, seed=0))
    assert not np.array_equal(a, groups.assign(gs, 40, seed=1))
    assert groups.assign(groups.resolve(ModelConfig()), 5, 0).tolist() == [0] * 5


def test_superset_architecture_and_prefixes() -> None:
    model = _model(
        ClientGroupConfig(share=0.5, r=4, layers=[5]),
        ClientGroupConfig(share=0.5, r=12),
    )
    (only,) = groups.architectures(model).values()
    assert only.lora.r == 12 and only.lora.layers == [3, 4, 5] and only.groups == []
    mixed = _model(ClientGroupConfig(share=0.5), ClientGroupConfig(share=0.5, num_layers=3))
    mixed.groups[1].layers = [0, 1, 2]
    archs = groups.architectures(mixed)
    assert list(archs) == ["full", "L3"] and archs["L3"].num_layers == 3
    assert archs["L3"].lora.layers == [0, 1, 2]


@pytest.mark.parametrize(
    ("key", "shape", "r", "layers", "expected"),
    [
        (A3, (12, 384), 4, None, (slice(0, 4), slice(None))),
        (B3, (384, 12), 4, None, (slice(None), slice(0, 4))),
        (A3, (12, 384), 4, (5,), None),  # a layer the group does not tune
        (A5, (12, 384), 4, (5,), (slice(0, 4), slice(None))),
        (HEAD, (6, 384), 4, (5,), (slice(None), slice(None))),
    ],
)
def test_trained_part(key, shape, r, layers, expected) -> None:
    g = groups.Group(0, "g", 1.0, r, layers, "", None)
    assert groups.trained_part(g, key, shape) == expected
    other = groups.Group(0, "g", 1.0, r, layers, "L3", 3)
    assert groups.trained_part(other, key, shape) is None  # another architecture's key


def _setup(mode: str):
    spec = FedrayConfig(
        model=_model(ClientGroupConfig(share=0.5, r=2), ClientGroupConfig(share=0.5, r=4), r=4),
        seed=0,
    )
    of = ClientGroups(spec, 4)
    glob = {A3: np.zeros((4, 3), np.float32), HEAD: np.zeros((2, 3), np.float32)}
    contributions = []
    for cid in range(4):
        r = of.group(cid).r
        a = np.zeros((4, 3), np.float32)
        a[:r] = cid + 1.0  # exactly zero beyond its rank
        contributions.append(Contribution(cid, {A3: a, HEAD: np.full((2, 3), cid + 1.0)}, 10))
    return glob, contributions, of


def test_component_mean_averages_each_component_over_its_trainers() -> None:
    glob, contributions, of = _setup("component")
    mean = grouped_mean(glob, contributions, of, [10.0] * 4, "component")
    big = [c.client_id + 1.0 for c in contributions if of.group(c.client_id).r == 4]
    assert np.allclose(mean[A3][:2], 2.5) and np.allclose(mean[A3][2:], np.mean(big))
    assert np.allclose(mean[HEAD], 2.5)
    padded = grouped_mean(glob, contributions, of, [10.0] * 4, "pad")
    assert np.allclose(padded[A3][2:], np.sum(big) / 4)  # diluted by the rank-2 clients
    truncated = grouped_mean(glob, contributions, of, [10.0] * 4, "truncate")
    assert np.allclose(truncated[A3][:2], 2.5) and not truncated[A3][2:].any()


class _NoCompute(ServerCompute):
    def distill(self, *args, **kwargs):  # pragma: no cover
        raise AssertionError


def test_hetlora_strategy_weights_and_rule_options() -> None:
    glob, contributions, _ = _setup("component")
    spec = FedrayConfig(
        model=_model(ClientGroupConfig(share=0.5, r=2), ClientGroupConfig(share=0.5, r=4), r=4)
    )
    for weighting in ("samples", "rank", "norm"):
        strategy = registry.build("algorithm", {"name": "hetlora", "weighting": weighting})
        strategy.setup(num_clients=4)
        strategy.bind(spec, _NoCompute())
        new = strategy.aggregate(glob, contributions)
        assert new[A3].shape == (4, 3) and strategy.metrics()["cohort_rank_mean"] == 3.0
    rule = strategy.client_rule()
    assert rule["name"] == "rank_groups" and rule["ranks"] == [2, 4] and len(rule["group_of"]) == 4


def test_rank_groups_rule_trains_only_its_block(tmp_path) -> None:
    from fedray.client.rules import LocalJob
    from fedray.client.trainer import Recipe, Trainer
    from fedray.models import save_tiny_classifier

    path = save_tiny_classifier(tmp_path / "bert")
    cfg = ModelConfig(
        name_or_path=path,
        lora=LoraConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"]),
    )
    trainer = Trainer(cfg, "classification", 2, seed=0)
    glob = trainer.get_state()
    glob = {k: v + (0.05 if "lora_B" in k else 0.0) for k, v in glob.items()}  # B nonzero
    rule = registry.build(
        "rule", {"name": "rank_groups", "group_of": [0], "ranks": [2], "layers": [[1]]}
    )
    rng = np.random.default_rng(0)
    batch = {
        "input_ids": rng.integers(5, 60, (8, 6)),
        "attention_mask": np.ones((8, 6), np.int64),
        "labels": np.arange(8) % 2,
    }
    result = rule.run(trainer, LocalJob(0, 1, batch, glob), Recipe(1, 4, 0.05, 0.01))
    for k, v in glob.items():
        delta = result.trained[k] - v
        if ".layer.0." in k:  # layer 0 is not this group's: untouched
            assert not delta.any(), k
        elif "lora_A" in k:
            assert delta[:2].any() and not delta[2:].any(), k
        elif "lora_B" in k:
            assert delta[:, :2].any() and not delta[:, 2:].any(), k
        else:
            assert delta.any(), k  # the head trains


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["model.groups=[{share:0.5,r:4},{share:0.5}]"], "need an algorithm that reads them"),
        (["algorithm=hetlora", "model.groups=[{share:0.5,r:4},{share:0.4}]"], "sum to 0.9"),
        (["algorithm=hetlora", "model.groups=[{share:1.0,r:0}]"], "r=0 must be >= 1"),
        (
            ["algorithm=hetlora", "model.groups=[{share:0.5},{share:0.5,num_layers:3}]"],
            "tunes layer 5 but keeps only num_layers=3",
        ),
        (
            [
                "algorithm=hetlora",
                "model.groups=[{share:0.5},{share:0.5,num_layers:3,layers:[0]}]",
            ],
            "need algorithm=feddf",
        ),
        (["algorithm=feddf", "data=shakespeare_lm"], "per token"),
        (["algorithm=feddf", "data.max_test=0"], "set a cap"),
    ],
)
def test_group_configs_are_refused_in_one_line(tmp_path, overrides, fragment) -> None:
    from fedray.app.cli import compose
    from fedray.app.spec import build_spec
    from fedray.core.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        build_spec(compose([f"tracking.uri=sqlite:///{tmp_path}/m.db", *overrides]))
    assert fragment in str(info.value) and "\n" not in str(info.value)
