"""Payments Service: owns `accounts`, `inbox` and `outbox_ps`; consumes payment requests, publishes results."""
