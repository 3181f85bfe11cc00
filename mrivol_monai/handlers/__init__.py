"""mrivol_monai.handlers"""
