"""Engine adapters: every engine is an OpenAI-compatible HTTP server the gateway talks to."""
