"""Shared fixtures: a private data cache and a small trained MNIST-1D model."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    # Generated datasets go to a per-run folder, never the user's cache.
    os.environ["BOUNDS_CACHE"] = str(tmp_path_factory.mktemp("bounds-cache"))


SMALL_DATA = "mnist1d:n=1500,m=300,seed=3"
SMALL_ARCH = "bounds.models.architectures:mnist1d_cnn:width=6"


@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    """A width-6 CNN trained briefly on 1 500 MNIST-1D examples, saved as a state dict."""
    import torch

    from bounds.models.architectures import mnist1d_cnn
    from bounds.tasks.classification.data import MNIST1DSpec, mnist1d

    data = mnist1d(MNIST1DSpec(n=1500, m=300, seed=3))
    torch.manual_seed(0)
    model = mnist1d_cnn(width=6)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(data, batch_size=100, shuffle=True, generator=generator)
    for _ in range(4):
        for inputs, labels in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
    path = tmp_path_factory.mktemp("model") / "small.pt"
    torch.save(model.state_dict(), path)
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Run `bounds ARGV...` in-process; return (exit code, standard output, standard error)."""
    from cli.app import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a test module (`pytestmark = usefixtures("one_thread")`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
