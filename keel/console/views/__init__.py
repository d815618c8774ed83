"""The console's page families, one module each; each exposes `add_routes(router)`."""
