"""Operator tools: commands people run against a deployment, never imported by the services.

    python -m ops.provision    each service's own PostgreSQL role and database and RabbitMQ user, with the
                               permissions they need and nothing more (docs/security-credentials.md)
"""
