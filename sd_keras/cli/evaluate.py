"""``sd-keras evaluate``: prompt-following of a shapes model on held-out prompts (``sd_keras.evaluate``).

Writes ``report.json`` and ``grid.png`` into ``--out``; exit status 1 when an accuracy is below its target.

Example:
    $ sd-keras evaluate -m shapes --out eval/ --steps 20
    $ sd-keras evaluate --ground-truth 1000      # the measurement itself, on dataset images
"""

import sys

from sd_keras import defaults
from sd_keras.errors import InputError


def cmd_evaluate(args):
    from sd_keras import evaluate

    for flag, value in (("--single", args.single), ("--double", args.double)):
        if value < 0:
            raise InputError(f"{flag} must be >= 0, got {value}")
    if args.ground_truth is not None:
        if args.ground_truth < 1:
            raise InputError(f"--ground-truth must be >= 1, got {args.ground_truth}")
        print(evaluate.format_summary(evaluate.evaluate_ground_truth(args.ground_truth)))
        return 0
    from sd_keras.loading import load

    model = load(args.model)
    guidance = evaluate.DEFAULT_GUIDANCE if args.cfg_scale is None else args.cfg_scale
    report = evaluate.evaluate(model, evaluate.heldout_scenes(args.single, args.double), num_steps=args.steps,
                               sampler=args.sampler, guidance_scale=guidance, seed=args.seed,
                               batch_size=args.batch_size, out_dir=args.out,
                               progress=lambda done, total: print(f"{done}/{total} images", file=sys.stderr))
    print(evaluate.format_summary(report["summary"]))
    return 0 if all(report["passed"].values()) else 1


def register(subparsers):
    """Add ``evaluate`` to the ``sd-keras`` command line."""
    parser = subparsers.add_parser(
        "evaluate", help="measure a shapes model's prompt-following on held-out prompts",
        description="Generate held-out prompts and measure what the images show (colour, shape, size, position, "
                    "background; sd_keras.evaluate). Exit status 1 when an accuracy is below its target.")
    parser.add_argument("-m", "--model", default=defaults.MODEL,
                        help="preset name, checkpoint path or bundle folder (default: %(default)s)")
    parser.add_argument("--out", help="folder for report.json and grid.png")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default: %(default)s)")
    parser.add_argument("--sampler", default=None, help="default: the pipeline's default sampler")
    parser.add_argument("--cfg-scale", type=float, default=None,
                        help="guidance scale (default: sd_keras.evaluate.DEFAULT_GUIDANCE, the reported results')")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--single", type=int, default=48, help="number of single-object prompts")
    parser.add_argument("--double", type=int, default=16, help="number of two-object prompts")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ground-truth", type=int, metavar="N",
                        help="instead: measure N dataset images (checks the measurement itself)")
    parser.set_defaults(func=cmd_evaluate)
    return parser
