"""Pick a network by name (for configs and the experiment runner) and the paper's per-model defaults.

Configs can either name a class directly::

    "network_def": {"_target_": "mrivol_monai.networks.UNet2d", "ed_blocks": 5, "width": 64}

or go through the registry::

    "network_def": {"_target_": "mrivol_monai.networks.build", "name": "@network_name", "width": 64}
"""

from __future__ import annotations

from typing import Any, Callable

from monai.networks.nets import UNet
from torch import nn

from mrivol_monai.networks.fcn import FCN2d
from mrivol_monai.networks.segnet import SegNet2d
from mrivol_monai.networks.unet import UNet2d

__all__ = ["NETWORKS", "PAPER_DEFAULTS", "build", "check_target", "unet3d"]


def unet3d(in_channels: int = 1, out_channels: int = 2, **kwargs: Any) -> UNet:
    """MONAI's 3D ``UNet`` (channels 16..256, strides 2): the volumetric reference of the cost table.

    (N, in_channels, D, H, W) -> (N, out_channels, D, H, W) logits; D, H, W divisible by 16.
    Extra keyword arguments go to ``monai.networks.nets.UNet`` (e.g. ``num_res_units``).
    """
    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2),
        **kwargs,
    )


NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet2d,
    "segnet": SegNet2d,
    "fcn": FCN2d,
    "unet3d": unet3d,
}

# Section 3 of the paper. All three use ReduceLROnPlateau on validation Dice (mode "max"), as train.json's
# lr_scheduler does. "loss" names are keys of mrivol_monai.losses.LOSSES.
PAPER_DEFAULTS: dict[str, dict[str, Any]] = {
    "unet": {"loss": "bce_dice", "optimizer": "Adam", "lr": 1e-3},
    "segnet": {"loss": "focal", "optimizer": "Adam", "lr": 1e-3},
    "fcn": {"loss": "bce", "optimizer": "RMSprop", "lr": 1e-4, "dropout": 0.5},
}


def build(name: str, **kwargs: Any) -> nn.Module:
    """Network ``name`` (case-insensitive: unet, segnet, fcn, unet3d) built with ``kwargs``.

    Raises ``ValueError`` naming the known networks when ``name`` is not one of them.
    """
    key = str(name).strip().lower()
    if key not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known networks: {', '.join(sorted(NETWORKS))}")
    return NETWORKS[key](**kwargs)


def check_target(target: str, setting: str = "network_def#_target_") -> str:
    """``target`` if MONAI's config parser can find it (a dotted path, or a short MONAI name such as ``UNet``);
    otherwise :class:`~mrivol_monai.errors.InputError` naming ``setting`` and the networks of this package.
    The bundle calls this in ``initialize``, before anything is built, instead of MONAI's traceback."""
    import pydoc

    from monai.bundle import ConfigComponent

    from mrivol_monai.errors import InputError

    name = ConfigComponent({"_target_": target}).resolve_module_name() if isinstance(target, str) else None
    if not isinstance(name, str) or pydoc.locate(name) is None:
        known = ", ".join(f"mrivol_monai.networks.{f.__name__}" for f in NETWORKS.values())
        raise InputError(None, f"{setting}: cannot find {target!r}; use one of {known} (or a MONAI network such "
                               "as monai.networks.nets.UNet)")
    return target
