"""TFDS builder of BigEarthNet-S2 v1.0 (``bigearthnet``) from local patch folders; see the
builder module."""

from tfds_builders.bigearthnet.bigearthnet_dataset_builder import BEN19_FROM_43, BEN43_CLASSES, Builder

__all__ = ["BEN19_FROM_43", "BEN43_CLASSES", "Builder"]
