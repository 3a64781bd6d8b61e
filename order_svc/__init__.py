"""Order Service: owns `orders` and `outbox_os`; publishes payment requests, consumes payment results."""
