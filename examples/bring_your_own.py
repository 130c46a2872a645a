"""Bring your own model and data: train, save a state dict, certify it from the CLI.

Your project provides a model factory and a data function (here examples/my_project.py);
`bounds compute` imports them by `module:function[:key=value,...]`:

    cd examples
    python bring_your_own.py                  # trains and writes moons.pt
    bounds compute moons.pt --arch my_project:make_model:hidden=16 \\
        --data my_project:training_data --test-data my_project:test_data

The script prints the same certificate through the library (`bounds.certify`).
"""

from __future__ import annotations

import argparse

import torch
from my_project import make_model, test_data, training_data

import bounds
from bounds.models.training import train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="moons.pt")
    parser.add_argument("--hidden", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = make_model(args.hidden)
    train_classifier(model, training_data(), epochs=20, lr=0.01, batch_size=100)
    torch.save(model.state_dict(), args.out)
    # The decoder builds the certified network from this factory, never from `model` itself.
    architecture = f"my_project:make_model:hidden={args.hidden}"
    certificate = bounds.certify(
        model, training_data(), test_data=test_data(), architecture=architecture
    )
    print(certificate.to_markdown())
    print(
        f"saved {args.out}; certify it with:\n  bounds compute {args.out} "
        f"--arch my_project:make_model:hidden={args.hidden} --data my_project:training_data "
        "--test-data my_project:test_data"
    )


if __name__ == "__main__":
    main()
