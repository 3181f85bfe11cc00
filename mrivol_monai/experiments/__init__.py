"""mrivol_monai.experiments"""
