"""Prefill-decode disaggregation on vLLM-CPU: short chats while long prompts arrive,
1 prefill + 1 decode replica vs 2 mixed replicas (see run.py)."""
