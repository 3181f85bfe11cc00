"""mrivol_monai.data"""
