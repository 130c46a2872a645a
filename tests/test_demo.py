"""`bounds demo`: the requential width family end to end on a tiny setting, its files and
claim, a student's word re-checked by `bounds verify`, and the command line's options."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli

from bounds.demo import QUICK, DemoSettings, ParameterSettings, run_demo, settings_for

TINY = DemoSettings(
    widths=(2, 4),
    teacher_width=4,
    teacher_epochs=1,
    n=600,
    m=200,
    data_seed=7,
    label_counts=(48, 64),
    chunk=16,
    steps_per_chunk=1,
    student_batch_size=16,
    final_epochs=1,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, TINY, quiet=True)


def test_every_row_certifies_a_decoded_student_of_the_same_teacher(demo):
    _, result = demo
    assert result.simultaneous and result.n == TINY.n
    assert [row.name for row in result.rows] == ["width 2", "width 4"]
    assert set(result.delta_shares.values()) == {TINY.delta / 2}
    teacher_errors = {row.certificate.train_loss("float") for row in result.rows}
    assert len(teacher_errors) == 1  # one teacher, its error in every row's float column
    for row, width in zip(result.rows, TINY.widths, strict=True):
        cert = row.certificate
        assert cert.code_config["family"] == "requential"
        assert cert.code_config["labels"] in TINY.label_counts
        assert cert.num_params == cert.code_config["labels"]
        assert cert.prior["student"]["spec"].endswith(f"mnist1d_cnn:width={width}")
        assert cert.prior["pool_spec"] == "mnist1d:n=64,m=1,seed=8"  # another seed than the data
        assert cert.prior["schedule"]["label_counts"] == list(TINY.label_counts)
        assert cert.code_breakdown["grid_index"] == 1  # two declared N: one bit
        assert cert.model_params == sum(p.numel() for p in cert.code.student.parameters())


def test_files_are_written(demo):
    out, result = demo
    for name in ("teacher.pt", "sweep.json", "sweep.md", "sweep.tex", "bounds.png", "bounds.pdf"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "settings.json").read_text())["label_counts"] == [48, 64]
    assert len(json.loads((out / "sweep.json").read_text())["rows"]) == 2
    for row, width in zip(result.rows, TINY.widths, strict=True):
        word = (out / f"student-{width}.code").read_bytes()
        weights = torch.load(out / f"student-{width}.pt", weights_only=True)
        decoded = row.certificate.code.student.state_dict()
        assert weights.keys() == decoded.keys()
        assert all(torch.equal(weights[name], decoded[name]) for name in weights)
        assert word == row.certificate.code.to_bytes()
        stated = json.loads((out / f"student-{width}.json").read_text())
        assert stated["code"]["bits"] == row.certificate.code_bits
        assert stated["invocation"]["data"] == "mnist1d:n=600,m=200,seed=7"


def test_a_student_word_verifies(demo, capsys):
    out, _ = demo
    code, out_text, err = run_cli(
        capsys,
        "verify", out / "student-4.code", "--certificate", out / "student-4.json", "-q",
    )  # fmt: skip
    assert code == 0, out_text + err
    assert "certificate: verified" in out_text


def test_settings_are_fixed_in_code():
    assert settings_for(False) == DemoSettings() and settings_for(True) == QUICK
    assert settings_for(False, parameters=True) == ParameterSettings()
    assert settings_for(True, parameters=True, dim=7).dim == 7
    full = DemoSettings()
    assert max(full.widths) >= 16 * min(full.widths)
    assert full.n == 60000 and full.pool_spec == "mnist1d:n=5000,m=1,seed=1"
    assert full.schedule().label_counts == full.label_counts


def test_subspace_options_need_parameters(capsys, tmp_path):
    code, _, err = run_cli(capsys, "demo", "--out", tmp_path / "x", "--dim", "10", "-q")
    assert code != 0 and "--parameters" in err
    assert not (tmp_path / "x").exists()


def test_plot_of_students_has_the_teacher_as_a_reference_line(demo, tmp_path):
    from bounds.reports.plot import plot_sweep

    _, result = demo
    figure = plot_sweep(result, tmp_path / "bounds.png")
    errors, code_length, _ = figure.axes
    lines = {line.get_label(): line for line in errors.get_lines()}
    assert set(lines) == {
        "binomial Occam bound",
        "student train error",
        "teacher train error",
        "student test error",
    }
    teacher = result.rows[0].certificate.train_loss("float")
    assert list(lines["teacher train error"].get_ydata()) == [teacher, teacher]  # axhline
    assert code_length.get_xlabel() == "student parameters"
    assert "requential" in errors.get_title()
