"""Search over what happened: events and deliveries, filtered, newest first, by cursor."""
