"""`lstmmt serve`: a trained model behind HTTP (Starlette on uvicorn; the `serve` extra).

One Translator, loaded once, answers every request; a request may change the search-time
decode settings, which `Translator.translate` takes per call. The parts:

- requests.py: pure parsers, request fields -> sentences, decode settings and options (and the
  answers' JSON), with the server's Limits and Model; testable with literal inputs.
- worker.py: the one thread that owns the model, batching queued requests.
- app.py: the Starlette application, module-level handlers reading `app.state`.
- startup.py: checks before the model loads, the listening socket, uvicorn and shutdown.
"""
