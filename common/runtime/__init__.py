"""A service's process: configuration, start-up and shutdown, background workers, retries, logs."""
