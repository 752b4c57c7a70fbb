"""Imaging and model steps (selection, conversion, preprocessing, network, outputs)."""
