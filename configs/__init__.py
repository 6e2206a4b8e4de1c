"""rsjax's experiment configs, one module per experiment (``configs/<experiment>.py``, each with
``get_config(arg=None)``; shared blocks in :mod:`configs.common`).

A package installed with rsjax (``pip install -e .``): ``import configs.swimdiff`` or
``configs.common.load("swimdiff", "smoke")`` from any directory. The command line keeps
``python -m rsjax.main --config=configs/<experiment>.py[:arg]`` (absl reads the file by path).
"""
