"""The HTTP API client layer (`recsys serve`): FastAPI over the engine's use cases; FastAPI is imported only here."""
