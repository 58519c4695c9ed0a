"""llmgw: OpenAI-compatible LLM gateway."""
