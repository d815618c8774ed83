"""The router layer: deployments, retries, fallbacks, breaker, learned routing; see layer.py."""
