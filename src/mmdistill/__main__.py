"""``python -m mmdistill``: the command line (see :mod:`mmdistill.cli`)."""
from .cli import main

main()
