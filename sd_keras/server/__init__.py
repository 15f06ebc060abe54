"""The HTTP API of sd_keras: an AUTOMATIC1111-compatible subset (``/sdapi/v1``), health, metrics, a web page.

Run it with ``sd-keras serve -m tiny`` and open http://127.0.0.1:7860/, or call it::

    curl -s http://127.0.0.1:7860/sdapi/v1/txt2img -H 'Content-Type: application/json' \\
         -d '{"prompt": "a red circle", "steps": 20, "width": 64, "height": 64}'

Modules: ``app`` (routes), ``schemas`` (request/response bodies), ``queue`` (worker, FIFO, batching,
cancellation), ``generation`` (model registry, running jobs), ``samplers`` (A1111 names), ``images`` (base64 PNG),
``middleware`` (API key, body limit, request metrics), ``metrics`` (Prometheus text), ``process`` (start a server
in a subprocess, for tests and benchmarks), ``cli`` (``sd-keras serve``).

Example:
    >>> from sd_keras.server.app import ServerSettings, create_app     # doctest: +SKIP
    >>> app = create_app(ServerSettings(models={"tiny": "tiny"}, model="tiny"))  # doctest: +SKIP
"""
