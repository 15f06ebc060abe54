"""``sd-keras train CONFIG.yaml [key=value ...] [--out DIR] [--resume] [--devices all] [--max-minutes M]``.

Exit status: 0 when every stage is done (the model is in ``OUT/model``), 3 when ``--max-minutes`` /
``train.max_minutes`` stopped it after writing a checkpoint (run the same command with ``--resume``),
2 for bad input (one line naming the cause), 130 on Ctrl-C (a checkpoint is written first).
"""

import os
import sys


def cmd_train(args):
    from sd_keras import train as train_lib

    if args.max_minutes is not None:  # before the config is read and the models are built
        train_lib.check_max_minutes(args.max_minutes)
    train_lib.load_config(args.config, args.overrides)  # bad file, key or value: one line, before Keras loads
    out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    try:
        summary = train_lib.train(args.config, out, overrides=args.overrides, resume=args.resume,
                                  devices=args.devices, progress=args.progress, max_minutes=args.max_minutes)
    except KeyboardInterrupt:
        print(f"sd-keras train: continue with: {_resume_command(args, out)}", file=sys.stderr)
        return 130
    if not summary["complete"]:
        print(f"sd-keras train: continue with: {_resume_command(args, out)}", file=sys.stderr)
        return train_lib.EXIT_PAUSED
    print(f"model: {summary['model']}")
    if "lora" in summary:
        print(f"LoRA adapters: {summary['lora']}")
    if "eval" in summary:
        print(f"evaluation: {os.path.join(out, 'eval', 'report.json')}")
    return 0


def _resume_command(args, out):
    import shlex

    words = ["sd-keras", "train", args.config, *args.overrides, "--out", out, "--resume"]
    if args.devices:
        words += ["--devices", str(args.devices)]
    if args.max_minutes:
        words += ["--max-minutes", f"{args.max_minutes:g}"]
    return " ".join(shlex.quote(word) for word in words)


def register(subparsers):
    """Add ``train`` to the ``sd-keras`` command line."""
    parser = subparsers.add_parser("train", help="train or fine-tune a model from a YAML config",
                                   description="Train the stages of CONFIG (see sd_keras/train/), then export "
                                               "OUT/model and evaluate it.")
    parser.add_argument("config", help="YAML training config, e.g. configs/shapes.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides right after CONFIG, e.g. train.steps=100 stages.vae.batch_size=16")
    parser.add_argument("--out", help="output folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    parser.add_argument("--devices", default=None, help="'all' or a count: data parallel over local devices (JAX)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop with a checkpoint after this many minutes (exit status 3)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.set_defaults(func=cmd_train)
    return parser
