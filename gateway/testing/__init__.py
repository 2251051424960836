"""The testing kit: helpers connectors and tests build on (``gateway.testing.sandbox``: fake vendor servers)."""
