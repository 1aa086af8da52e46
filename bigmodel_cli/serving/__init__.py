"""`bigmodel serve`: a trained run behind an HTTP API (FastAPI on uvicorn).

  service.py   the loaded run, its limits and metadata
  batcher.py   dynamic micro-batching on worker threads, off the event loop
  app.py       routes, limits, errors, API key, access log
  schemas.py   request and error bodies
  metrics.py   Prometheus metrics
Needs the `serve` extra: pip install 'bigmodel[serve]'.
"""
