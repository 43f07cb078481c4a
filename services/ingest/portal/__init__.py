"""The consumer portal at /portal: one application's endpoints, deliveries and retries,
opened with a one-use link (``links.py``), scoped by the same tenant sessions as the API."""
