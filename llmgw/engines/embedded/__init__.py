"""The embedded engine: a transformers + torch CPU server speaking vLLM's OpenAI protocol.

Runs as its own process (`python -m llmgw.engines.embedded --model demo ...`); the
gateway reaches it over HTTP exactly as it reaches vLLM. Heavy imports (torch,
transformers) stay inside this package.
"""
