"""`bounds.reports.plot.plot_sweep`: the files it writes and what the two panels show."""

from __future__ import annotations

import matplotlib
import pytest
import torch

import bounds
from bounds.models.architectures import mnist1d_cnn
from bounds.reports.plot import plot_sweep
from bounds.tasks.classification.data import MNIST1DSpec, mnist1d

SPEC = MNIST1DSpec(n=600, m=200, seed=5)
GRID = [{"levels": 4, "scheme": "kmeans"}]
ERROR_LINES = [
    "binomial Occam bound",
    "quantized train error",
    "float train error",
    "test error (quantized)",
]


def models():
    pairs = []
    for width in (2, 4):
        torch.manual_seed(width)
        pairs.append((f"w{width}", mnist1d_cnn(width=width)))
    return pairs


@pytest.fixture(scope="module")
def train():
    return mnist1d(SPEC, split="train")


@pytest.fixture(scope="module")
def result(train):
    test = mnist1d(SPEC, split="test")
    return bounds.sweep(models(), train, test_data=test, simultaneous=True, grid=GRID)


def labels(axes) -> list[str]:
    return [line.get_label() for line in axes.get_lines()]


def test_png_is_written_with_both_panels(result, tmp_path):
    rc_before = dict(matplotlib.rcParams)
    path = tmp_path / "sweep.png"
    figure = plot_sweep(result, path)
    assert path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert dict(matplotlib.rcParams) == rc_before  # the caller's style is left alone

    errors, code_length, bits = figure.axes  # two panels and the bottom panel's twin axis
    assert tuple(figure.get_size_inches()) == pytest.approx((3.4, 4.2))
    assert labels(errors) == ERROR_LINES
    assert labels(code_length) == ["code length K (left)"]
    assert labels(bits) == ["bits per parameter (right, log)"]
    assert [text.get_text() for text in errors.get_legend().get_texts()] == ERROR_LINES
    assert len(code_length.get_legend().get_texts()) == 2
    assert errors.get_ylabel() == "error rate"
    assert code_length.get_xlabel() == "network parameters"
    assert code_length.get_ylabel() == "code length K (bits)"
    assert errors.get_xscale() == code_length.get_xscale() == "log"
    # K on a linear axis from zero, so that its change is drawn at its true relative size.
    assert code_length.get_yscale() == "linear" and code_length.get_ylim()[0] == 0
    assert bits.get_yscale() == "log"


def test_lines_carry_the_certificates_numbers(result, tmp_path):
    figure = plot_sweep(result, tmp_path / "sweep.png")
    errors, code_length, bits = figure.axes
    certificates = result.certificates
    params = [cert.model_params for cert in certificates]
    bound, quantized, _, test = errors.get_lines()
    assert list(bound.get_xdata()) == params
    assert list(bound.get_ydata()) == [
        cert.bounds["error"]["binomial"].value for cert in certificates
    ]
    assert list(quantized.get_ydata()) == [
        cert.train["decoded"]["losses"]["error"] for cert in certificates
    ]
    assert list(test.get_ydata()) == [
        cert.test["summary"]["losses"]["error"] for cert in certificates
    ]
    assert list(bits.get_lines()[0].get_ydata()) == [c.bits_per_param for c in certificates]
    assert list(code_length.get_lines()[0].get_ydata()) == [c.code_bits for c in certificates]


def test_pdf_by_suffix_and_no_test_line_without_test_data(train, tmp_path):
    result = bounds.sweep(models(), train, grid=GRID)
    path = tmp_path / "sweep.pdf"
    figure = plot_sweep(result, path)
    assert path.read_bytes()[:5] == b"%PDF-" and path.stat().st_size > 1_000
    assert labels(figure.axes[0]) == ERROR_LINES[:3]
    assert "separate claims" in figure.axes[0].get_title()


def test_unknown_suffix_is_refused_before_writing(result, tmp_path):
    path = tmp_path / "sweep.jpg"
    with pytest.raises(ValueError, match=r"must end in \.png or \.pdf"):
        plot_sweep(result, path)
    assert not path.exists()
