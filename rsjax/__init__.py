"""rsjax: JAX/Flax pretraining of remote-sensing encoders and their downstream evaluation."""

__version__ = "0.1.0"
