"""`make bench`: the benchmark report (see bench/__main__.py)."""
