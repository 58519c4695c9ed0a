"""The engine leg's HTTP/1.1 client: keep-alive pools on asyncio Protocols, responses
parsed by httptools (connection.py: one connection; pool.py: pools, the client)."""
