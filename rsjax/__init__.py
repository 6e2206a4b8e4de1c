"""rsjax: JAX/Flax pretraining of remote-sensing encoders and their downstream evaluation."""

from rsjax import backend as _backend

__version__ = "0.1.0"

# XLA:CPU flags measured faster for rsjax's models (rsjax/backend.py); before JAX starts a backend.
_backend.apply_cpu_flags()
