"""The playbook's entry point: ``python main.py --data data.txt --ctx 64 ...`` trains a model.

It is ``bevialm train`` under another name: the same flags (``python main.py --help``),
defined once in :mod:`bevialm.cli`.
"""

from __future__ import annotations

import sys

from bevialm.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:], prog="main.py"))
