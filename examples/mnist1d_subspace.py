"""Train a small CNN on MNIST-1D in a random subspace and save it for ``bounds compute``.

The network's parameters are θ = θ0 + P·w (Li et al. 2018; Lotfi et al. 2022): θ0 is the
CNN's random initialization from ``--seed``, P a random D×d projection regenerated from the
same seed, and only the d coordinates w are trained. θ0 and P are fixed before the data is
seen, so they are the prior and cost no bits: the code word carries only w, which is why
about 6 500 bits describe a network of 6 058 parameters (width 24, d = 2 000).

Steps:

1. train w with AdamW and a cosine schedule (:func:`bounds.models.training.train_classifier`);
2. quantization-aware fine-tuning (:func:`quantize.finetune`): w is coded with ``--levels``
   levels of the ``--scheme`` quantizer, then the latent w and the codebook train further
   with the quantized w in the forward pass (straight-through gradients), one epoch per
   call with a cosine-decayed learning rate. The saved w *is* the quantized one: it takes
   at most ``--levels`` distinct values, which ``bounds compute``'s k-means recovers
   exactly, so the certificate is about the very model whose errors are printed here;
3. save the Subspace checkpoint with the metadata ``bounds compute`` needs to rebuild the
   model without ``--arch``.

Run it and certify the result (δ = 0.05 by default)::

    PYTHONPATH=. python examples/mnist1d_subspace.py --out mnist1d_subspace.pt
    bounds compute mnist1d_subspace.pt --data mnist1d:n=60000,seed=0

With the defaults the saved model has 2.5 % training and 2.8 % test error, its code word is
6 508 bits long and ``bounds compute`` certifies a true error of at most 13.6 % (δ = 0.05).
The defaults were chosen with benchmarks/tune_mnist1d_subspace.py (results, other seeds and
other settings in benchmarks/results/mnist1d_subspace.md).

On an otherwise idle 2-core CPU the run takes about 1.5 minutes, ~25 s of which generate
MNIST-1D the first time (later runs read the cache); it takes longer when other programs
load the CPU. torch is limited to ``--threads`` threads (default 1) because these tiny
convolutions gain little from more, and oversubscribed threads slow them down many times.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from bounds.models.architectures import mnist1d_cnn
from bounds.models.training import step_size, train_classifier
from bounds.tasks.classification.data import MNIST1DSpec, mnist1d
from bounds.tasks.classification.evaluate import evaluate
from quantize import Code, Subspace, compress, finetune

ARCHITECTURE = "bounds.models.architectures:mnist1d_cnn"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a subspace CNN on MNIST-1D and save a checkpoint for bounds compute."
    )
    parser.add_argument("--out", default="mnist1d_subspace.pt", help="checkpoint to write")
    parser.add_argument("--width", type=int, default=24, help="CNN channels per layer")
    parser.add_argument("--dim", type=int, default=2000, help="subspace dimension d")
    parser.add_argument(
        "--projection",
        default="auto",
        choices=("auto", "dense", "chunked", "kronecker"),
        help="random projection P (see quantize/subspace.py)",
    )
    parser.add_argument("--epochs", type=int, default=20, help="training epochs")
    parser.add_argument("--lr", type=float, default=0.05, help="peak AdamW learning rate")
    parser.add_argument("--batch-size", type=int, default=384)
    parser.add_argument("--levels", type=int, default=12, help="quantization levels of w")
    parser.add_argument("--scheme", default="uniform", choices=("uniform", "kmeans"))
    parser.add_argument("--qat-epochs", type=int, default=10, help="0 skips fine-tuning")
    parser.add_argument("--qat-lr", type=float, default=0.003, help="peak fine-tuning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of θ0, P and the batch order")
    parser.add_argument("--n", type=int, default=60000, help="training examples")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def report(name: str, model: torch.nn.Module, train, test) -> None:
    on_train, on_test = evaluate(model, train), evaluate(model, test)
    print(
        f"{name}: train error {on_train.error_rate:.4f} ({on_train.errors}/{on_train.n}), "
        f"test error {on_test.error_rate:.4f} ({on_test.errors}/{on_test.n})"
    )


def finetune_quantized(
    subspace: Subspace,
    train,
    *,
    levels: int,
    scheme: str,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    quiet: bool = True,
) -> Code:
    """Code w with `levels` levels of `scheme`, fine-tune it quantization-aware for `epochs`
    epochs (learning rate lr·(1 + cos(π e/epochs))/2 in epoch e) and load the decoded,
    quantized w into `subspace`. Returns the final code word."""
    code = compress(subspace, levels=levels, scheme=scheme)
    order = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=order)
    for epoch in range(epochs):
        # One call per epoch, so that the step size can decay (finetune's is constant).
        code = finetune(subspace, code, loader, 1, step_size(lr, epoch, epochs, "cosine"))
        if not quiet:
            print(f"  fine-tuning epoch {epoch + 1}/{epochs}: code word {code.bits} bits")
    subspace.load_coded_state(code.decode())
    return code


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data_spec = MNIST1DSpec(n=args.n, m=10000, seed=0)
    train, test = mnist1d(data_spec, "train"), mnist1d(data_spec, "test")

    torch.manual_seed(args.seed)  # θ0: part of the prior, regenerated from the checkpoint
    metadata = {
        "arch": ARCHITECTURE,
        "arch_kwargs": {"width": args.width},
        "data": f"mnist1d:n={args.n},seed=0",
    }
    subspace = Subspace(
        mnist1d_cnn(args.width),
        args.dim,
        args.seed,
        args.projection,
        init_seed=args.seed,
        metadata=metadata,
    )
    print(
        f"MNIST-1D n={len(train)}, m={len(test)}; CNN width {args.width} with "
        f"D={subspace.num_params} parameters, trained in a d={args.dim} "
        f"{subspace.projection} subspace"
    )
    losses = train_classifier(
        subspace,
        train,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        quiet=args.quiet,
    )
    print(f"trained {args.epochs} epochs, final training loss {losses[-1]:.4f}")
    report("float model", subspace, train, test)

    if args.qat_epochs:
        code = finetune_quantized(
            subspace,
            train,
            levels=args.levels,
            scheme=args.scheme,
            epochs=args.qat_epochs,
            lr=args.qat_lr,
            batch_size=args.batch_size,
            seed=args.seed,
            quiet=args.quiet,
        )
        print(
            f"quantization-aware fine-tuning: {args.levels} {args.scheme} levels, "
            f"code word {code.bits} bits"
        )
        report("quantized model (saved)", subspace, train, test)

    subspace.save(args.out)
    print(f"saved {args.out} in {time.perf_counter() - start:.0f} s")
    print(f"certify it with: bounds compute {args.out} --data {metadata['data']}")


if __name__ == "__main__":
    main()
