"""``sd-keras info IMAGE``: print the generation parameters stored in a PNG (and their parsed fields)."""

from sd_keras.errors import InputError


def cmd_info(args):
    from sd_keras import metadata

    text = metadata.read_parameters(args.image)
    if text is None:
        raise InputError(f"{args.image}: no generation parameters in this image")
    parsed = metadata.parse_parameters(text)
    print(text)
    print()
    for key, value in parsed.items():
        print(f"{key}: {value}")
    return 0


def register(subparsers):
    """Add ``info`` to the ``sd-keras`` command line."""
    info = subparsers.add_parser("info", help="print the generation parameters stored in a PNG")
    info.add_argument("image")
    info.set_defaults(func=cmd_info)
    return info
