"""Fuzz targets for every file reader, their seed corpora, and the replay of the committed corpora (see run.py)."""
