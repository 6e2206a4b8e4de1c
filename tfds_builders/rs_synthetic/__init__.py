"""TFDS builder of the procedural multispectral dataset (``rs_synthetic``); see the builder module."""

from tfds_builders.rs_synthetic.rs_synthetic_dataset_builder import Builder, RsSyntheticConfig

__all__ = ["Builder", "RsSyntheticConfig"]
