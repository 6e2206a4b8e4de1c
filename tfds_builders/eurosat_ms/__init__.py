"""TFDS builder of EuroSAT MS (``eurosat_ms``, 13 bands) from local GeoTIFFs; see the builder
module."""

from tfds_builders.eurosat_ms.eurosat_ms_dataset_builder import Builder

__all__ = ["Builder"]
