"""mrivol_monai: brain-structure volumes from 3D T1 MRI with small 2D networks (MONAI bundle + package)."""

__version__ = "0.1.0"
