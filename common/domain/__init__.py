"""The words every layer shares: the project's errors (each with its HTTP status), input parsing, JSON text."""
