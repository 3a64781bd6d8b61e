"""RabbitMQ: connecting (several nodes), queues, the confirmed publisher, the batching consumer, messages,
dead-lettering."""
