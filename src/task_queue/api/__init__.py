"""The HTTP API: FastAPI routes over the same client the Python API uses."""
