"""Fixtures for the tests against real vLLM (the light install: scripts/install-vllm-light.sh).

vLLM must see ``VLLM_TARGET_DEVICE=cpu`` (and no hub) before its first import, so the environment
is set here, when pytest collects this folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from kvledger.tap import harness

harness.prepare_env()

NO_VLLM = "vLLM is not installed (scripts/install-vllm-light.sh installs it; CI does)"
HAVE_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model folder (a config.json only)."""
    return harness.model_dir(tmp_path_factory.mktemp("model"))
