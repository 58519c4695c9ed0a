"""Prefill-decode disaggregation: one served model, two replica pools, two routing
pipelines (llm-d's prefill and decode profiles), and per engine the protocol that ties
the two legs of a request together.

- ``decide``: per request, disaggregated or aggregated (pure; thresholds from config).
- ``vllm_protocol`` / ``sglang_protocol``: the request bodies each engine's P/D expects.
- ``legs``: sending one leg with its time limit; the decode leg's response wrapper.
- ``vllm_flow`` / ``sglang_flow``: the two-leg request for each protocol, with its
  fallbacks.
- ``orchestrator``: ``Disaggregation``, what the dispatcher calls for a P/D model.
- ``assemble``: config -> ``Disaggregation`` (used by the composition root).
"""
