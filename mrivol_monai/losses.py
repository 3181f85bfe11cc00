"""Segmentation losses by name, over MONAI's implementations (paper section 3, "Hyperparameter tuning").

Every loss takes (N, C, H, W) logits and a one-hot (N, C, H, W) target and returns a scalar; the
activation is applied inside the loss, never in the network. Defaults per name:

================  ==========================================================================
name              loss
================  ==========================================================================
bce_dice          ``DiceCELoss(softmax=True)``: the paper's UNet loss (BCE + Dice). With the
                  2-channel one-hot targets used throughout, softmax cross-entropy over
                  (background, structure) equals binary cross-entropy on the sigmoid of the
                  logit difference, so this is BCE + Dice and extends unchanged to the 5-class
                  subcortical task (E5). For a 1-channel output pass ``sigmoid=True`` instead
                  (MONAI then uses ``BCEWithLogitsLoss`` for the CE term).
focal             ``FocalLoss(gamma=2)``, sigmoid per channel (SegNet's loss)
bce               binary cross-entropy with logits per channel (FCN's loss)
dice              ``DiceLoss(softmax=True)``
soft_dice         ``DiceLoss(softmax=True, squared_pred=True)`` (squared-denominator soft Dice)
binary_dice       ``DiceLoss(sigmoid=True, include_background=False)``: foreground channels only
tversky           ``TverskyLoss(softmax=True, alpha=0.3, beta=0.7)`` (weights misses over false alarms)
generalized_dice  ``GeneralizedDiceLoss(softmax=True)``
================  ==========================================================================

Keyword arguments to :func:`build` override these defaults and go straight to the MONAI class;
passing ``sigmoid`` or ``softmax`` replaces the default activation rather than adding to it.
Predicted labels are ``argmax`` over channels whichever loss was used.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.losses import DiceCELoss, DiceLoss, FocalLoss, GeneralizedDiceLoss, TverskyLoss
from torch import nn

__all__ = ["LOSSES", "OneHotBCEWithLogitsLoss", "build"]


class OneHotBCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """Per-channel BCE on (N, C, H, W) logits and one-hot target -> scalar.

    MONAI has no standalone BCE loss; this is torch's, plus a shape check and a cast of integer or
    boolean one-hot targets to the logits' dtype.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 (torch's name)
        """(N, C, H, W) logits, (N, C, H, W) one-hot target -> loss."""
        if input.shape != target.shape:
            raise ValueError(
                f"bce: logits {tuple(input.shape)} and one-hot target {tuple(target.shape)} must have the same shape"
            )
        return super().forward(input, target.to(input.dtype))


_ACTIVATION_KEYS = ("sigmoid", "softmax")

LOSSES: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "bce_dice": (DiceCELoss, {"softmax": True}),
    "focal": (FocalLoss, {"gamma": 2.0, "use_softmax": False}),
    "bce": (OneHotBCEWithLogitsLoss, {}),
    "dice": (DiceLoss, {"softmax": True}),
    "soft_dice": (DiceLoss, {"softmax": True, "squared_pred": True}),
    "binary_dice": (DiceLoss, {"sigmoid": True, "include_background": False}),
    "tversky": (TverskyLoss, {"softmax": True, "alpha": 0.3, "beta": 0.7}),
    "generalized_dice": (GeneralizedDiceLoss, {"softmax": True}),
}


def build(name: str, **kwargs: Any) -> nn.Module:
    """Loss ``name`` (case-insensitive, see the module table) with ``kwargs`` over its defaults.

    The returned module maps (N, C, H, W) logits and (N, C, H, W) one-hot targets to a scalar.
    Raises ``ValueError`` naming the known losses when ``name`` is not one of them.
    """
    key = str(name).strip().lower()
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    cls, defaults = LOSSES[key]
    options = dict(defaults)
    if any(k in kwargs for k in _ACTIVATION_KEYS):
        for k in _ACTIVATION_KEYS:
            options.pop(k, None)
    options.update(kwargs)
    return cls(**options)
