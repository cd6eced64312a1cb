"""``bevialm board``: a local web page to watch training and explore attention.

A standard-library server (:mod:`http.server`) over a folder of runs (``runs/`` by
default), and a page whose JavaScript and CSS ship in ``static/`` (nothing is fetched
from the internet). The pieces, one idea each:

- :mod:`bevialm.board.paths`: which files a request may name (only under the runs folder);
- :mod:`bevialm.board.runs_view`: the runs, their metrics (read from a byte offset, so
  the page polls only what is new) and their samples;
- :mod:`bevialm.board.explore`: a checkpoint's attention over a prompt, or while it generates;
- :mod:`bevialm.board.server`: the HTTP handler, its limits, and :func:`serve`.
"""
