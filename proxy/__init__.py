"""The gateway's proxy: its HTTP/1.1 server side, client and connection pool (the gateway alone uses them)."""
