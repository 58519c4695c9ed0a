"""llmgw: OpenAI-compatible LLM gateway.

``llmgw.tool`` and ``llmgw.batch`` mark the methods of a class served as tools
(docs/tools.md); nothing else is imported with the package.
"""

from llmgw.tools.decorators import batch, tool

__all__ = ["batch", "tool"]
