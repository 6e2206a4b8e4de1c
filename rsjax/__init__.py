"""rsjax: JAX/Flax pretraining of remote-sensing encoders and their downstream evaluation.

Layers, lowest first (:data:`LAYERS`; ``tests/test_layers.py`` checks the import graph of every
module, imports inside functions included, against it): a module imports only modules of its
own layer or below, no two modules import each other (directly or around a circle), and a job
(``rsjax.jobs.<name>``) imports no other job, only the registry ``rsjax.jobs``.
"""

from rsjax import backend as _backend

__version__ = "0.1.0"

LAYERS = (
    ("rsjax", "rsjax.errors", "rsjax.backend", "rsjax.versions"),  # no rsjax imports
    (
        "rsjax.sharding",
        "rsjax.diffusion",
        "rsjax.losses",
        "rsjax.flops",
        "rsjax.plots",
        "rsjax.results",
        "rsjax.trainable",
    ),  # pure helpers
    ("rsjax.data",),  # reading, ops, pipelines
    ("rsjax.optim", "rsjax.workdir", "rsjax.tfds_builders"),
    ("rsjax.models",),
    ("rsjax.methods", "rsjax.tasks"),  # Trainables; neither imports the other
    ("rsjax.trainables",),  # config.method -> a Trainable
    ("rsjax.checkpoint",),
    ("rsjax.train",),  # the one loop
    ("rsjax.evaluate",),
    (
        "rsjax.export",
        "rsjax.import_weights",
        "rsjax.study",
        "rsjax.noisy_label",
        "rsjax.bench_peer",
        "rsjax.notebook_utils",
    ),
    ("rsjax.bench", "rsjax.jobs"),
    ("rsjax.main",),
)

# XLA:CPU flags measured faster for rsjax's models (rsjax/backend.py); before JAX starts a backend.
_backend.apply_cpu_flags()
