"""``python -m bevialm``: the ``bevialm`` command, for environments without its console script
(a venv with only NumPy, as in the playbook, where ``python main.py`` trains)."""

from __future__ import annotations

import sys

from bevialm.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m bevialm"))
