"""Code shared by the gateway, the Order Service and the Payments Service."""
