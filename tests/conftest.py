import pytest
import torch

from tests.helpers import make_config


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run where a CUDA device is; elsewhere they are deselected (and counted
    as such in the summary), not skipped one by one."""
    if torch.cuda.is_available():
        return
    needs_gpu = [item for item in items if item.get_closest_marker("gpu")]
    if needs_gpu:
        config.hook.pytest_deselected(items=needs_gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


@pytest.fixture
def tiny_config(tmp_path):
    """train.py's config with the TINY settings, writing into this test's tmp_path."""
    return lambda *overrides: make_config(tmp_path, *overrides)
