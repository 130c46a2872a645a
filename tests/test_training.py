"""train_classifier: it lowers the training loss, is reproducible, and rejects bad input."""

import math

import pytest
import torch

from bounds.models.architectures import mnist1d_cnn
from bounds.models.training import step_size, train_classifier
from bounds.tasks.classification.data import MNIST1DSpec, mnist1d
from bounds.tasks.classification.evaluate import evaluate
from quantize import Subspace


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These models are tiny: on a loaded machine extra threads only wait for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_mnist1d():
    # The spec of the shared `small_model` fixture, so a test session generates it once.
    return mnist1d(MNIST1DSpec(n=1500, m=300, seed=3), split="train")


def _cnn(width: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)
    return mnist1d_cnn(width)


def test_training_lowers_the_loss_of_a_cnn(tiny_mnist1d):
    model = _cnn()
    before = evaluate(model, tiny_mnist1d).mean_loss
    losses = train_classifier(model, tiny_mnist1d, epochs=3, lr=0.01, batch_size=100)
    after = evaluate(model, tiny_mnist1d).mean_loss
    assert len(losses) == 3
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.8 * losses[0]
    assert after < 0.8 * before


def test_training_a_subspace_moves_only_w(tiny_mnist1d):
    subspace = Subspace(_cnn(), dim=200, seed=0)
    theta0 = {name: t.clone() for name, t in subspace.theta0().items()}
    before = evaluate(subspace, tiny_mnist1d).mean_loss
    losses = train_classifier(subspace, tiny_mnist1d, epochs=3, lr=0.1, batch_size=64)
    after = evaluate(subspace, tiny_mnist1d).mean_loss
    assert losses[-1] < losses[0]
    assert after < 0.8 * before
    assert subspace.w.detach().abs().sum().item() > 0
    for name, tensor in subspace.theta0().items():
        assert torch.equal(tensor, theta0[name])


def test_same_seed_same_weights_other_seed_other_weights(tiny_mnist1d):
    def run(seed: int) -> tuple[list[float], torch.Tensor]:
        subspace = Subspace(_cnn(), dim=20, seed=0)
        losses = train_classifier(subspace, tiny_mnist1d, epochs=2, lr=0.05, seed=seed)
        return losses, subspace.w.detach().clone()

    losses_a, w_a = run(seed=3)
    losses_b, w_b = run(seed=3)
    losses_c, w_c = run(seed=4)
    assert losses_a == losses_b
    assert torch.equal(w_a, w_b)
    assert not torch.equal(w_a, w_c)


def test_training_keeps_the_mode_and_accepts_a_pair(tiny_mnist1d):
    model = _cnn().eval()
    x, y = tiny_mnist1d.tensors
    losses = train_classifier(model, (x[:100], y[:100]), epochs=1, lr=0.01, batch_size=32)
    assert len(losses) == 1 and math.isfinite(losses[0])
    assert not model.training


def test_cosine_schedule_runs_from_lr_towards_zero():
    assert step_size(0.1, 0, 100, "cosine") == 0.1
    assert step_size(0.1, 50, 100, "cosine") == pytest.approx(0.05)
    assert step_size(0.1, 99, 100, "cosine") == pytest.approx(
        0.1 * (1 + math.cos(0.99 * math.pi)) / 2
    )
    assert step_size(0.1, 99, 100, "constant") == 0.1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 1.5}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"schedule": "linear"}, "schedule"),
    ],
)
def test_bad_arguments_are_rejected(tiny_mnist1d, kwargs, message):
    arguments = {"epochs": 1, "lr": 0.01, **kwargs}
    with pytest.raises(ValueError, match=message):
        train_classifier(_cnn(), tiny_mnist1d, **arguments)


def test_bad_data_and_frozen_models_are_rejected(tiny_mnist1d):
    x, y = tiny_mnist1d.tensors
    with pytest.raises(ValueError, match="labels"):
        train_classifier(_cnn(), (x, y.float()), epochs=1, lr=0.01)
    with pytest.raises(ValueError, match="as many inputs"):
        train_classifier(_cnn(), (x, y[:10]), epochs=1, lr=0.01)
    with pytest.raises(ValueError, match="TensorDataset"):
        train_classifier(_cnn(), [x, y], epochs=1, lr=0.01)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        train_classifier(_cnn(), (x, y + 5), epochs=1, lr=0.01)
    with pytest.raises(ValueError, match="rejects inputs"):
        train_classifier(_cnn(), (x.squeeze(1), y), epochs=1, lr=0.01)
    frozen = _cnn().requires_grad_(False)
    with pytest.raises(ValueError, match="require grad"):
        train_classifier(frozen, tiny_mnist1d, epochs=1, lr=0.01)


def test_a_diverging_loss_is_an_error(tiny_mnist1d):
    x, y = tiny_mnist1d.tensors
    poisoned = x.clone()
    poisoned[0, 0, 0] = math.inf
    with pytest.raises(ValueError, match="loss became"):
        train_classifier(_cnn(), (poisoned, y), epochs=1, lr=0.01, batch_size=len(y))
