"""The HTTP edge of `sgpt serve`: Starlette on uvicorn (the `serve` extra), over the engine."""
