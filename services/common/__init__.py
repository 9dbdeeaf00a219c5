"""What every service shares: settings base, gRPC hosting and errors, logs, tracing, the bus.

No business logic lives here.
"""
