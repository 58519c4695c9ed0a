"""The HTTP face of the gateway: OpenAI routes, health, metrics."""
