"""Terminal tables keep every value whole at any console width."""

from __future__ import annotations

import re

import pytest
from rich.console import Console

from cli.output import FittedTables

HEADER = ["model", "params", "K (bits)", "bits/param", "float train err", "binomial bound"]
CELLS = [
    ["width 8", "1,258", "7,503", "5.964", "0.0070", "0.3225"],
    ["runs/a-rather-long-model-file-name.pt", "112,138", "4,719", "0.04208", "0.0070", "0.1355"],
]


def rendered(width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(FittedTables(HEADER, CELLS, title="claim", caption="shares"))
    return console.export_text()


@pytest.mark.parametrize("width", [40, 60, 80, 120])
def test_values_are_never_split_and_lines_fit(width):
    text = rendered(width)
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width
    tokens = set(re.findall(r"[\d.,]+", text))
    for line in CELLS:
        for value in line[1:]:
            assert value in tokens, (width, value)


def test_columns_go_to_stacked_tables_that_repeat_the_labels():
    wide, narrow = rendered(120), rendered(40)
    assert wide.count("width 8") == 1  # every column side by side
    assert narrow.count("width 8") >= 2  # the label column heads every stacked table
    assert narrow.index("claim") < narrow.index("width 8") < narrow.rindex("shares")


def test_markdown_keeps_the_code_length_breakdown_in_a_table_of_its_own():
    import torch
    from torch import nn

    import bounds

    def network() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    generator = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(500, 8, generator=generator),
        torch.randint(0, 4, (500,), generator=generator),
    )
    certificate = bounds.certify(network(), (x, y), architecture=network)
    markdown = certificate.to_markdown()
    summary, parts = markdown.split("| part of K | bits |")
    assert "| code length K |" in summary and "| payload |" not in summary
    rows = [line.split("|")[1:3] for line in parts.strip().splitlines()[1:]]
    assert {name.strip(): int(bits.replace(",", "")) for name, bits in rows} == (
        certificate.code_breakdown
    )
    assert sum(certificate.code_breakdown.values()) == certificate.code_bits
