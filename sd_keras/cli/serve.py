"""``sd-keras serve``: run the HTTP API and web page with uvicorn.

    sd-keras serve -m tiny --port 7860
    SD_KERAS_API_KEY=secret-key sd-keras serve -m sd-v1 --host 0.0.0.0
    sd-keras serve --models-dir ~/models

Only the models named at start (``-m``, ``--models-dir``) can be selected by clients. Fields a request leaves
out get AUTOMATIC1111's API defaults (``sd_keras.defaults.SERVER``).
"""

import ipaddress
import logging
import os
import sys

from sd_keras import defaults, env, paths
from sd_keras.cli.arguments import add_prompt_syntax_arguments, check_lora_dir, prompt_syntax_of
from sd_keras.errors import InputError

API_KEY_ENV = "SD_KERAS_API_KEY"
LISTENING_PREFIX = "sd-keras serve: listening on "
MODEL_FILE_EXTENSIONS = paths.CHECKPOINT_EXTENSIONS
DEFAULT_MAX_PROGRAMS = 16
DEFAULT_READ_TIMEOUT = 30.0
MAX_HEADER_BYTES = 16 * 1024  # h11's limit on the request line and headers
KEEP_ALIVE_SECONDS = 5


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


def _is_model_folder(path):
    from sd_keras.weights import saved

    return saved.is_saved_folder(path) or paths.is_diffusers_folder(path) or paths.is_bundle_folder(path)


def models_in_folder(folder):
    """The model specs in ``folder``: ``.safetensors`` / ``.ckpt`` files and model folders (sd_keras saved,
    diffusers, exported bundles), sorted by name."""
    if not os.path.isdir(folder):
        raise InputError(f"--models-dir {folder}: no such folder")
    found = []
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if os.path.isfile(path) and entry.lower().endswith(MODEL_FILE_EXTENSIONS):
            found.append(path)
        elif os.path.isdir(path) and _is_model_folder(path):
            found.append(path)
    if not found:
        raise InputError(f"--models-dir {folder}: no model in it ({', '.join(MODEL_FILE_EXTENSIONS)} files, "
                       "sd_keras, diffusers or bundle folders)")
    return found


def registered_models(specs):
    """Name → spec for each ``-m`` spec (a preset under its name, a path under its base name); nothing else."""
    from sd_keras.loading import PRESET, spec_kind
    from sd_keras.server.generation import model_name_for

    models = {}
    for spec in specs:
        if spec_kind(spec) == PRESET:  # InputError naming the presets for an unknown spec
            if spec in models:
                continue
            name = spec
        else:
            name = model_name_for(spec)
            if models.get(name) == spec:
                continue
        if name in models:
            raise InputError(f"-m {spec}: its name {name!r} is already taken by {models[name]!r}; rename the file")
        models[name] = spec
    return models


def _check_api_key(args):
    """The API key from --api-key or the environment; None when neither is given; InputError when unusable."""
    if args.api_key is not None:
        api_key, source = args.api_key, "--api-key"
    elif env.text(API_KEY_ENV) is not None:
        api_key, source = env.text(API_KEY_ENV), f"${API_KEY_ENV}"
    else:
        return None
    if not api_key.strip():
        raise InputError(f"{source} is empty (an unset variable?): refusing to serve without the key you meant to "
                       "set; give a key of at least 8 characters, or leave it out to serve without one")
    if len(api_key) < 8 or any(c.isspace() for c in api_key):
        raise InputError("the API key must be at least 8 characters without spaces")
    return api_key


def http_protocol(header_timeout):
    """uvicorn's h11 protocol, closing a connection whose request line and headers take over ``header_timeout``
    seconds to arrive (uvicorn itself only times out idle keep-alive connections)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer = None

        def _arm_header_timer(self):
            self._cancel_header_timer()
            if header_timeout is not None:
                self._header_timer = self.loop.call_later(header_timeout, self._header_timeout)

        def _cancel_header_timer(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self):
            self._header_timer = None
            # IDLE: no complete request line and headers yet (after one, h11 moves on to SEND_BODY or DONE)
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.logger.debug("closing a connection whose request headers stalled")
                self.transport.close()

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self):
            super().on_response_complete()
            self._arm_header_timer()  # the next request on this connection gets the same time

        def connection_lost(self, exc):
            self._cancel_header_timer()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def cmd_serve(args):
    import uvicorn

    from sd_keras.server.app import ServerSettings, create_app
    from sd_keras.server.generation import model_name_for
    from sd_keras import presets

    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be in [0, 65535], got {args.port}")
    if args.queue_size < 1 or args.max_batch < 1:
        raise InputError("--queue-size and --max-batch must be >= 1")
    if args.max_programs < 1:
        raise InputError(f"--max-programs must be >= 1, got {args.max_programs}")
    if not args.read_timeout > 0:
        raise InputError(f"--read-timeout must be > 0 seconds, got {args.read_timeout:g}")
    check_lora_dir(args)
    allowed_hosts = tuple(h.strip() for value in args.allowed_hosts or () for h in value.split(",") if h.strip())
    api_key = _check_api_key(args)
    if args.upscalers_dir is not None and not os.path.isdir(args.upscalers_dir):
        raise InputError(f"--upscalers-dir {args.upscalers_dir}: no such folder")
    specs = list(args.model or [])
    for folder in args.models_dir or ():
        specs.extend(models_in_folder(folder))
    specs = specs or [defaults.MODEL]
    models = registered_models(specs)
    first = specs[0] if specs[0] in presets.names() else model_name_for(specs[0])
    _configure_logging(args.log_level)
    if not _is_loopback(args.host) and api_key is None:
        logging.getLogger("sd_keras.server").warning(
            "serving on %s without an API key: anyone who can reach this port can generate; set %s",
            args.host, API_KEY_ENV)
    settings = ServerSettings(models=models, model=first, api_key=api_key, queue_size=args.queue_size,
                              max_batch=args.max_batch, dtype=args.dtype, output_dir=args.output_dir,
                              max_programs=args.max_programs, allowed_hosts=allowed_hosts,
                              upscalers_dir=args.upscalers_dir,
                              read_timeout=args.read_timeout, prompt_syntax=prompt_syntax_of(args),
                              lora_dir=args.lora_dir)
    app = create_app(settings)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=5, http=http_protocol(args.read_timeout),
                            timeout_keep_alive=KEEP_ALIVE_SECONDS, h11_max_incomplete_event_size=MAX_HEADER_BYTES)

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
    serve = subparsers.add_parser(
        "serve", help="HTTP API (AUTOMATIC1111-compatible /sdapi/v1) and a web page",
        description="Serve one model over HTTP. Clients choose among the models named here (-m, --models-dir) "
                    f"by name; the API key comes from --api-key or ${API_KEY_ENV} (the variable keeps it out of "
                    f"'ps'). Fields a request leaves out get AUTOMATIC1111's API defaults: {defaults.SERVER.steps} "
                    f"steps, CFG scale {defaults.SERVER.cfg_scale:g}, sampler {defaults.SERVER.sampler!r}, a random "
                    f"seed, denoising strength {defaults.SERVER.strength:g}.")
    serve.add_argument("-m", "--model", action="append",
                       help=f"preset name, checkpoint path or bundle folder (default {defaults.MODEL}); repeat to "
                            "register several; the first is loaded; only these (and --models-dir) are selectable")
    serve.add_argument("--models-dir", action="append",
                       help="register every model in this folder (.safetensors/.ckpt files, sd_keras, diffusers "
                            "and bundle folders) under its file name; repeatable")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    serve.add_argument("--api-key", help=f"require this key on every endpoint but /health (or set ${API_KEY_ENV}); "
                                         "at least 8 characters: an empty key is refused")
    serve.add_argument("--allowed-hosts", action="append",
                       help="without an API key, Host names accepted besides the address the server is reached on "
                            "(comma-separated, repeatable; '*': any). Others get 403 (DNS rebinding)")
    serve.add_argument("--max-programs", type=int, default=DEFAULT_MAX_PROGRAMS,
                       help="compiled programs kept in memory, one per model part and shape (size, batch, steps, "
                            f"sampler, mode); the least recently used is dropped (default {DEFAULT_MAX_PROGRAMS})")
    serve.add_argument("--read-timeout", type=float, default=DEFAULT_READ_TIMEOUT,
                       help="seconds a client may take to send its request headers, and between two parts of its "
                            f"body; stalled connections are closed (default {DEFAULT_READ_TIMEOUT:g})")
    serve.add_argument("--queue-size", type=int, default=16, help="most requests waiting; more get 503")
    serve.add_argument("--max-batch", type=int, default=4,
                       help="most images per batch when compatible requests are batched (1: never batch)")
    serve.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    serve.add_argument("--output-dir", help="where requests with save_images=true save their PNGs")
    serve.add_argument("--upscalers-dir",
                       help="upscaler files (.pth / .safetensors: ESRGAN, Real-ESRGAN, compact) offered by "
                            "/sdapi/v1/upscalers and the extras endpoints under their file names, besides "
                            "Lanczos and Nearest; none ship with sd_keras (Real-ESRGAN's releases, OpenModelDB)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_prompt_syntax_arguments(serve, defaults.SERVER.prompt_syntax)
    serve.set_defaults(func=cmd_serve)
    return serve

