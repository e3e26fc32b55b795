"""Composition of the real config: every option of every group, and rejected inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fedray.app.cli import CONF_DIR, compose, precheck
from fedray.app.spec import validate
from fedray.core.errors import ConfigError

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())
REQUIRED = {
    "data/hf": ["data.path=imdb"],
    "data/files": ["data.path=x.csv"],
    "model/hf_lora": ["model.name_or_path=gpt2"],
    "algorithm/fedasync": ["mode=async"],
    "algorithm/fedbuff": ["mode=async"],
    "mode/async": ["algorithm=fedbuff"],
    "privacy/dp_fedavg": ["privacy.noise_multiplier=1.0"],  # or privacy.target_epsilon
    "algorithm/fednova": ["client.optimizer=sgd"],
    "algorithm/flora": ["compression=trim"],
    "data/image_folder": ["data.path=images"],
    "model/vit": ["data=digits"],
    "model/logreg": ["data=synthetic"],
    "model/mf": ["data=movielens"],
    "model/ncf": ["data=movielens"],
}


@pytest.mark.parametrize(
    "option",
    [f"{g}/{p.stem}" for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))],
)
def test_every_option_composes_and_validates(option: str) -> None:
    group, name = option.split("/")
    validate(compose([f"{group}={name}", *REQUIRED.get(option, [])]))


def test_config_yaml_is_only_a_defaults_list() -> None:
    import yaml

    assert list(yaml.safe_load((CONF_DIR / "config.yaml").read_text())) == ["defaults"]


def test_overrides_reach_the_config() -> None:
    cfg = compose(["mode.rounds=3", "partition=iid", "partition.num_clients=7", "seed=5"])
    assert (cfg.mode.rounds, cfg.partition.name, cfg.partition.num_clients, cfg.seed) == (
        3,
        "iid",
        7,
        5,
    )


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["algorithm=nope"], "Could not find 'algorithm/nope'"),
        (["partition.alpha=0"], "partition.alpha=0.0 must be > 0"),
        (["partition.alpha=-1"], "must be > 0"),
        (["partition.alpah=1"], "partition.alpah"),
        (["mode.rounds=abc"], "could not be converted to Integer"),
        (["mode.rounds=0"], "mode.rounds=0 must be >= 1"),
        (["mode.clients_per_round=25"], "exceeds partition.num_clients=24"),
        (["+algorithm.mu=1"], "algorithm.mu is not an option of algorithm=fedavg"),
        (["algorithm.server_lr=-1"], "server_lr=-1.0 must be > 0"),
        (["data=files"], "data.path is required"),
        (["client.device=tpu"], "client.device"),
        (["experiment=nope"], "Could not find 'experiment/nope'"),
    ],
)
def test_bad_input_is_one_line(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        precheck(overrides)
    assert "\n" not in str(info.value)


def test_multirun_checks_every_combination() -> None:
    precheck(["-m", "partition=iid,dirichlet", "mode.rounds=1,2"])
    with pytest.raises(ConfigError, match=r"partition\.alpha"):
        precheck(["-m", "partition.alpha=1.0,0"])


def test_experiment_presets_set_workloads() -> None:
    cfg = compose(["experiment=w2"])
    assert (cfg.partition.name, cfg.mode.clients_per_round, cfg.client.round_stride) == (
        "natural",
        50,
        10_000,
    )
    assert Path(CONF_DIR / "experiment" / "w1.yaml").read_text().startswith("# @package _global_")


def test_more_torch_threads_than_reserved_cpus_is_warned(caplog) -> None:
    from fedray.app.spec import oversubscription

    assert oversubscription(compose(["client.num_cpus=1", "client.torch_threads=1"])) is None
    assert oversubscription(compose(["client.num_cpus=1.5", "client.torch_threads=2"])) is None
    assert oversubscription(compose(["client.num_cpus=1"])) is None  # null: matched to the slot
    for w in ("w1", "w2", "w3"):  # a benchmark preset narrowed to 1-CPU actors follows the slot
        assert oversubscription(compose([f"experiment={w}", "client.num_cpus=1"])) is None
    gpu = compose(["client.num_cpus=1", "client.torch_threads=4", "client.num_gpus=1"])
    assert oversubscription(gpu) is None
    with caplog.at_level("WARNING", logger="fedray.app.spec"):
        validate(compose(["client.num_cpus=1", "client.torch_threads=2"]))
    assert "client.torch_threads=2 exceeds client.num_cpus=1" in caplog.text


def test_a_saved_config_reloaded_untyped_still_validates(tmp_path: Path) -> None:
    # `fedray resume` reads the run's .hydra/config.yaml back without the structured schema
    cfg = compose(["speed.kind=lognormal", "speed.sigma=0.3"])
    path = tmp_path / "config.yaml"
    path.write_text(OmegaConf.to_yaml(cfg))
    validate(OmegaConf.load(path))
    bad = OmegaConf.load(path)
    bad.speed.kind = "warp"
    with pytest.raises(ConfigError, match=r"speed\.kind='warp' is unknown"):
        validate(bad)
    bad.speed.kind, bad.speed.sigma = "lognormal", "wide"  # a hand-edited file: wrong type
    with pytest.raises(ConfigError, match=r"^speed\.sigma: Value 'wide'"):
        validate(bad)
    bad.speed.sigma = 0.3  # the faults and attack nodes are typed by the same helper
    bad.faults = {"hang_s": "long"}
    with pytest.raises(ConfigError, match=r"^faults\.hang_s: Value 'long'"):
        validate(bad)
