"""mrivol_monai.transforms"""
