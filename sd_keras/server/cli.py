"""``sd-keras serve``: run the HTTP API and web page with uvicorn.

    sd-keras serve -m tiny --port 7860
    SD_KERAS_API_KEY=secret sd-keras serve -m sd-v1 --host 0.0.0.0
"""

import ipaddress
import logging
import os
import sys

API_KEY_ENV = "SD_KERAS_API_KEY"
LISTENING_PREFIX = "sd-keras serve: listening on "


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _configure_logging(level):
    # only the server's own logger: the root logger would also print every library's INFO lines
    logger = logging.getLogger("sd_keras.server")
    logger.setLevel(getattr(logging, level.upper()))
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def registered_models(specs):
    """Name → spec for every preset plus each ``-m`` spec (a path is served under its base name)."""
    from sd_keras import presets
    from sd_keras.cli import CliError
    from sd_keras.server.generation import model_name_for

    models = {name: name for name in presets.names()}
    for spec in specs:
        if spec in models:
            continue
        if not os.path.exists(spec):
            raise CliError(f"unknown model {spec!r}: not a preset ({', '.join(presets.names())}) and no such file "
                           "or folder")
        name = model_name_for(spec)
        if name in models:
            raise CliError(f"-m {spec}: its name {name!r} is already taken by {models[name]!r}; rename the file")
        models[name] = spec
    return models


def cmd_serve(args):
    import uvicorn

    from sd_keras.cli import DEFAULT_MODEL, CliError
    from sd_keras.server.app import ServerSettings, create_app
    from sd_keras.server.generation import model_name_for
    from sd_keras import presets

    specs = args.model or [DEFAULT_MODEL]
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be in [0, 65535], got {args.port}")
    if args.queue_size < 1 or args.max_batch < 1:
        raise CliError("--queue-size and --max-batch must be >= 1")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if api_key is not None and (len(api_key) < 8 or any(c.isspace() for c in api_key)):
        raise CliError("the API key must be at least 8 characters without spaces")
    models = registered_models(specs)
    first = specs[0] if specs[0] in presets.names() else model_name_for(specs[0])
    _configure_logging(args.log_level)
    if not _is_loopback(args.host) and api_key is None:
        logging.getLogger("sd_keras.server").warning(
            "serving on %s without an API key: anyone who can reach this port can generate; set %s",
            args.host, API_KEY_ENV)
    settings = ServerSettings(models=models, model=first, api_key=api_key, queue_size=args.queue_size,
                              max_batch=args.max_batch, dtype=args.dtype, output_dir=args.output_dir)
    app = create_app(settings)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=5)

    class AnnouncingServer(uvicorn.Server):
        """Prints the bound address whatever the log level (with ``--port 0``, scripts read the port here)."""

        async def startup(self, sockets=None):
            await super().startup(sockets)
            for server in getattr(self, "servers", []):
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    host = f"[{host}]" if ":" in host else host
                    print(f"{LISTENING_PREFIX}http://{host}:{port}", file=sys.stderr, flush=True)

    AnnouncingServer(config).run()
    return 0


def register(subparsers):
    """Add ``serve`` to the ``sd-keras`` command line."""
    from sd_keras.cli import DEFAULT_MODEL

    serve = subparsers.add_parser(
        "serve", help="HTTP API (AUTOMATIC1111-compatible /sdapi/v1) and a web page",
        description="Serve one model over HTTP. Models are chosen by name among the presets and the -m names; "
                    f"the API key comes from --api-key or ${API_KEY_ENV} (the variable keeps it out of 'ps').")
    serve.add_argument("-m", "--model", action="append",
                       help=f"preset name, checkpoint path or bundle folder (default {DEFAULT_MODEL}); repeat to "
                            "register several; the first is loaded")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    serve.add_argument("--api-key", help=f"require this key on every endpoint but /health (or set ${API_KEY_ENV})")
    serve.add_argument("--queue-size", type=int, default=16, help="most requests waiting; more get 503")
    serve.add_argument("--max-batch", type=int, default=4,
                       help="most images per batch when compatible requests are batched (1: never batch)")
    serve.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    serve.add_argument("--output-dir", help="where requests with save_images=true save their PNGs")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=cmd_serve)
    return serve


if __name__ == "__main__":
    from sd_keras.cli import main

    sys.exit(main(["serve", *sys.argv[1:]]))
