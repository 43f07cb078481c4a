"""The four Hookstream services. No service imports another."""
