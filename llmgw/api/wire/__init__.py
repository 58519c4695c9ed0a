"""llmgw's own HTTP/1.1 serving of the model routes, inside uvicorn (llmgw.api.wire.protocol)."""
