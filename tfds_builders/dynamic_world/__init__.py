"""TFDS builder of Sentinel-2 patches with Dynamic World labels (``dynamic_world``) from local
GeoTIFFs; see the builder module."""

from tfds_builders.dynamic_world.dynamic_world_dataset_builder import Builder, DynamicWorldConfig

__all__ = ["Builder", "DynamicWorldConfig"]
