"""A simulated engine fleet with a KV-cache cost model, to compare routing policies.

``sim_engine`` serves N simulated OpenAI-compatible replicas from one process,
``workloads`` builds seeded request streams, and ``run`` replays them through each router
and reports cache hit rate, TTFT, throughput and load balance. See README.md here.
"""
