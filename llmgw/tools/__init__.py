"""Python classes served as tools: the ``@llmgw.tool`` and ``@llmgw.batch`` decorators,
schemas from type hints, worker processes or in-process instances, dynamic batching, and
what the HTTP face serves of them (``/v1/tools``, ``/mcp``). See docs/tools.md.

Only the decorators are imported with ``llmgw``; the rest loads when tools are served.
"""
