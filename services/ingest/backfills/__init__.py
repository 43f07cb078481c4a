"""Backfills: re-deliver a window of the events log to one subscription (design §12).
The routes and the checks live here; the janitor's worker runs them."""
