"""The builtin Shakespeare source and WORKLOAD.md W1/W2 reproduced bit for bit."""

from __future__ import annotations

import random

import numpy as np

from fedray.core.config import DataConfig, PartitionConfig
from fedray.data import FederatedData, build_federated_data, load_source
from fedray.data.sources.shakespeare import parse_speeches

GENRES = ["comedies", "histories", "problems", "roman", "romances", "tragedies"]


def test_parse_rule() -> None:
    play = "\n".join(
        [
            "# Title",
            "**ANNE**  ",
            "  First line,  ",
            "second _\\[Aside]_ line.",
            "",
            "_Exit_",
            "**BOB**",
            "Bob speaks",
            "**CAROL**",
            "Carol speaks",
            "### SCENE II.",
            "not a speech",
            "**DAVE** says",
            "**EVE**",
            "",
            "orphan line",
        ]
    )
    assert parse_speeches(play) == [
        ("ANNE", "First line, second _\\[Aside]_ line."),
        ("BOB", "Bob speaks"),
        ("CAROL", "Carol speaks"),
        ("EVE", ""),
    ]


def test_w1_counts() -> None:
    corpus, pool, test = load_source(DataConfig(name="shakespeare"), 0)
    assert len(corpus.texts) == 21_908
    assert corpus.label_names == GENRES and corpus.task == "classification"
    assert corpus.labels is not None and corpus.labels.dtype == np.int64
    assert np.bincount(corpus.labels).tolist() == [4713, 6241, 3079, 2345, 2036, 3494]
    assert len(pool) == 18_622
    assert np.bincount(corpus.labels[test]).tolist() == [129, 171, 84, 64, 56, 96]
    assert pool.dtype == test.dtype == np.int64
    assert not set(pool.tolist()) & set(test.tolist())
    assert corpus.texts[0].startswith("Now, fair Hippolyta, our nuptial hour Draws on apace;")
    assert corpus.groups is not None
    assert corpus.groups[0] == "comedies/a-midsummer-night-s-dream.md/THESEUS"
    assert all(len(t.split()) >= 8 for t in corpus.texts)


def test_speaker_names_are_verbatim() -> None:
    corpus, _, _ = load_source(DataConfig(name="shakespeare"), 0)
    nurses = {g for g in corpus.groups or [] if g.lower() == "tragedies/romeo-and-juliet.md/nurse"}
    assert nurses == {"tragedies/romeo-and-juliet.md/NURSE", "tragedies/romeo-and-juliet.md/Nurse"}


def test_min_words_and_seed_change_the_data() -> None:
    all_speeches, _, _ = load_source(DataConfig(name="shakespeare", min_words=0), 0)
    assert len(all_speeches.texts) > 21_908
    _, pool0, test0 = load_source(DataConfig(name="shakespeare"), 0)
    _, pool1, test1 = load_source(DataConfig(name="shakespeare"), 1)
    assert len(test1) == 600 and test0.tolist() != test1.tolist()
    assert sorted(pool0.tolist() + test0.tolist()) != sorted(pool1.tolist() + test1.tolist())


def test_lm_variant_shares_speeches_and_test_set() -> None:
    cls, pool, test = load_source(DataConfig(name="shakespeare"), 0)
    lm, lm_pool, lm_test = load_source(DataConfig(name="shakespeare_lm", task="causal_lm"), 0)
    assert lm.task == "causal_lm" and lm.labels is None and lm.label_names is None
    assert lm.texts == cls.texts and lm.groups == cls.groups
    assert lm_test.tolist() == test.tolist() and lm_pool.tolist() == pool.tolist()


def test_w1_fingerprint(w1: FederatedData) -> None:
    rng = random.Random(0)
    schedule = [sorted(rng.sample(range(20), 5)) for _ in range(5)]
    assert schedule[0] == [1, 8, 12, 13, 15] and schedule[4] == [2, 3, 10, 15, 19]
    assert w1.client_sizes().tolist() == [64] * 20
    assert w1.fingerprint(schedule) == "c219cf428cdbcd7d"
    assert w1.fingerprint(schedule[:3]) == "aef64031ed576541"  # W3
    hist = w1.label_histogram()
    assert hist.shape == (20, 6) and (hist.sum(axis=1) == 64).all()
    assert (hist.max(axis=1) / 64).mean() > 0.45  # label-skewed (IID would be ~0.3)


def test_w2_fingerprint(w2: FederatedData) -> None:
    assert w2.num_clients() == 1222
    sizes = w2.client_sizes()
    assert sizes.sum() == 6224
    assert np.bincount(sizes, minlength=9)[1:].tolist() == [252, 108, 94, 89, 64, 38, 46, 531]
    assert ((w2.label_histogram() > 0).sum(axis=1) == 1).all()  # one genre per speaker
    rng = random.Random(0)
    schedule = [sorted(rng.sample(range(1222), 50)) for _ in range(10)]
    assert schedule[0][:5] == [2, 28, 82, 127, 128]
    assert w2.fingerprint(schedule) == "c9b5bff9a5173afb"


def test_natural_on_lm_task() -> None:
    lm = build_federated_data(
        DataConfig(name="shakespeare_lm", task="causal_lm"),
        PartitionConfig(name="natural", max_samples_per_client=8),
        0,
    )
    assert lm.num_clients() == 1222 and lm.client_sizes().sum() == 6224
