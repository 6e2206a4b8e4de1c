"""TFDS builder of EuroSAT RGB (``eurosat_rgb``) from local JPEGs; see the builder module."""

from tfds_builders.eurosat_rgb.eurosat_rgb_dataset_builder import Builder

__all__ = ["Builder"]
