"""Export a pretrained encoder from an rsjax workdir to a PyTorch state dict.

    python -m rsjax.export --workdir=RUN [--step=N] --out=encoder.pt --format=torchvision|timm|smp

Writes ``encoder.pt`` (torch.save of a dict of tensors, loadable with ``weights_only=True``),
``encoder.safetensors`` and ``encoder.pt.json`` (arch, in_channels, stem, source step, format;
bands with their wavelengths, ground resolution and product level; the normalization: scale,
mean/std and its formula), all mode 0644 under the usual umask.
"""

from __future__ import annotations

from absl import app, flags, logging

from rsjax.errors import ConfigError, run_cli
from rsjax.export.torch_export import FORMATS, export_encoder

FLAGS = flags.FLAGS


def define_flags() -> None:
    # Defined only when run as a program, so importing this module next to another absl
    # program (rsjax.main also has --workdir) cannot raise DuplicateFlagError.
    flags.DEFINE_string("workdir", None, "Training run directory (holds checkpoints/).")
    flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the latest).")
    flags.DEFINE_string("out", None, "Output .pt path; .safetensors and .pt.json are written beside it.")
    flags.DEFINE_enum("format", "torchvision", list(FORMATS), "Key naming of the exported state dict.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # quiet by default (Orbax logs every file); --verbosity=N as given
        logging.set_verbosity(logging.WARNING)
    if not FLAGS.workdir or not FLAGS.out:
        raise ConfigError("--workdir and --out are required")
    paths = export_encoder(FLAGS.workdir, FLAGS.out, step=FLAGS.step, fmt=FLAGS.format)
    for kind, p in paths.items():
        print(f"{kind}: {p}")


if __name__ == "__main__":
    define_flags()
    run_cli(main, "rsjax.export")  # an RsjaxError (missing workdir, no readable checkpoint) -> one line, exit 2
