"""TFDS builder of SSL4EO-S12 Sentinel-2 L1C (``ssl4eo_s12``) from local GeoTIFFs; see the
builder module."""

from tfds_builders.ssl4eo_s12.ssl4eo_s12_dataset_builder import Builder

__all__ = ["Builder"]
