"""Test-session setup: offline Hugging Face, one Ray instance for the whole session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray with 2 CPUs and 2 logical GPUs, started once and always shut down."""
    import logging

    import ray

    from fedray.app.cluster import WORKER_ENV

    ray.init(
        address="local",  # our own instance, never another user's Ray on a shared machine
        num_cpus=2,
        num_gpus=4,
        include_dashboard=False,
        namespace="fedray-tests",
        logging_level=logging.WARNING,
        runtime_env={"env_vars": dict(WORKER_ENV)},
        _system_config={"worker_niceness": 0},  # Ray's 15 lets any other load starve the tests
    )
    try:
        yield ray
    finally:
        ray.shutdown()
