"""Loss factory: every name gives a finite scalar that falls as predictions improve; clear errors."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss, DiceLoss, FocalLoss

from mrivol_monai import losses


def one_hot_square(classes: int = 2) -> torch.Tensor:
    """(2, classes, 16, 16) one-hot target: class k fills a band of rows, class 0 the rest."""
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    for k in range(1, classes):
        labels[:, 3 * k : 3 * k + 3, 2:14] = k
    return torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
@pytest.mark.parametrize("classes", [2, 5])
def test_loss_falls_as_prediction_improves(name: str, classes: int) -> None:
    target = one_hot_square(classes)
    loss_fn = losses.build(name)
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    values = []
    for confidence in (-4.0, 0.0, 1.0, 4.0):  # from confidently wrong to confidently right
        logits = confidence * (2 * target - 1) + 0.1 * noise
        value = loss_fn(logits, target)
        assert value.ndim == 0 and torch.isfinite(value)
        values.append(value.item())
    assert values == sorted(values, reverse=True), values
    assert values[-1] < 0.1 * values[0]


def test_bce_dice_is_binary_cross_entropy_plus_dice_for_two_classes() -> None:
    target = one_hot_square(2)
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    # softmax CE over (background, structure) == BCE on the logit difference
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 1] - logits[:, 0], target[:, 1])
    dice = DiceLoss(softmax=True)(logits, target)
    assert losses.build("bce_dice")(logits, target).item() == pytest.approx((bce + dice).item(), rel=1e-5)
    assert isinstance(losses.build("BCE_Dice"), DiceCELoss)


def test_bce_is_per_channel_and_accepts_integer_targets() -> None:
    target = one_hot_square(2)
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(2))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert losses.build("bce")(logits, target.long()).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"bce: logits \(2, 2, 16, 16\) and one-hot target \(2, 1, 16, 16\)"):
        losses.build("bce")(logits, target[:, 1:])


def test_defaults_and_overrides() -> None:
    focal = losses.build("focal")
    assert isinstance(focal, FocalLoss) and focal.gamma == 2.0 and not focal.use_softmax
    tversky = losses.build("tversky", alpha=0.5, beta=0.5)
    assert (tversky.alpha, tversky.beta) == (0.5, 0.5)
    # choosing sigmoid replaces the default softmax instead of clashing with it
    dice = losses.build("dice", sigmoid=True)
    assert dice.sigmoid and not dice.softmax
    assert not losses.build("binary_dice").include_background


def test_unknown_loss_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown loss 'hinge'; known losses: bce, bce_dice, binary_dice, dice, focal"):
        losses.build("hinge")
