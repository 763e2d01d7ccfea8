"""Shared fixtures. ``tiny_run`` is one finished local run of the tiny demo workflow, made once per
test session; tests that need a finished run copy it (smkutil.copy_run) and never modify it."""

from __future__ import annotations

import pytest
from smkutil import TINY_SESSIONS, run_snakemake, tiny_config, write_workdir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny_run")
    write_workdir(tmp, tiny_config(), TINY_SESSIONS)
    run_snakemake(tmp)
    return tmp


def pytest_collection_modifyitems(config, items):
    """SLURM tests last (the sort is stable): their cluster fixture may leave SLURM installed but
    stopped, and then every Snakemake start waits ~10 s for the slurm plugin's scontrol call."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is not None)


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (results and timings do not depend on the core count), then
    the previous count back. Test files that train networks use it for every test (``pytestmark``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
