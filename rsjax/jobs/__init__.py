"""One ``run(config, workdir) -> dict`` per job; ``rsjax.main`` maps ``config.job`` to them.

Every job follows the same order: complete and validate the whole config (a typo fails before
anything is written), check a pretrained checkpoint it reads, THEN open the workdir (lock,
``config.json``), read data, train through :func:`rsjax.train.fit`, evaluate, write the report.
Libraries (train, optim, evaluate, data, methods, tasks, models, losses) never import jobs.
"""

import importlib

from rsjax.errors import ConfigError

# config.job -> module of rsjax.jobs with run(config, workdir). Imported lazily by rsjax.main.
JOBS = {
    "pretrain": "pretrain",
    "eval_classification": "eval_classification",
    "eval_multilabel": "eval_multilabel",
    "change_detection": "change_detection",
    "segmentation": "segmentation",
    "noisy_label": "noisy_label",
    "noisy_label_study": "noisy_label_study",
    "study_eurosat": "study_eurosat",
    "study_dubai": "study_dubai",
    "study_oscd": "study_oscd",
}


def get(job: str):
    """``run(config, workdir)`` of ``job`` (ConfigError for an unknown name)."""
    if job not in JOBS:
        raise ConfigError(f"config.job={job!r} is unknown; known jobs: {sorted(JOBS)}")
    return importlib.import_module(f"rsjax.jobs.{JOBS[job]}").run
