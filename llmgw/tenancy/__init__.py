"""Tenancy: API keys (``keys``), their persistence (``store``), request and token limits
(``limits``) and the gate the API layer asks before dispatch (``gate``)."""
