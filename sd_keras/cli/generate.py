"""``sd-keras generate``: text-to-image, image-to-image (``-i``) and inpainting (``-i`` with ``--mask``).

Flags follow stable-diffusion.cpp (``-p``, ``-n``, ``-m``, ``-s``, ``-W``, ``-H``, ``--steps``, ``--cfg-scale``,
``--sampling-method``, ``-b``, ``-o``, ``-i``, ``--strength``, ``--mask``); the defaults are AUTOMATIC1111's web
UI's (``sd_keras.defaults.CLI``). Every check that needs neither Keras nor the model runs first.

Example:
    $ sd-keras generate -p "a red circle on a blue background" -s 7 -b 2 -o circle_%d.png
"""

import os
import sys

from sd_keras import defaults
from sd_keras.cli.arguments import (add_checkpoint_arguments, add_lora_argument, add_prompt_syntax_arguments,
                                    apply_lora_arguments, check_lora_target, check_model_spec, check_output_paths,
                                    check_prompts, lora_specs, prompt_syntax_of)
from sd_keras.errors import InputError

COMPILING_TEXT = "compiling (first run of this shape)"


class _ProgressBar:
    """The sampling bar: the loop's ``progress`` callback (steps done) with its ``phase`` hook, which says when
    the first run of a shape compiles and restarts the bar's clock when the steps start, so the rate and the ETA
    come from the step times alone."""

    def __init__(self, bar):
        self.bar = bar
        self._first_step = True

    def __call__(self, step_done):
        if self._first_step:  # image-to-image starts at a later step: those steps took no time
            self.bar.initial = step_done - 1
            self._first_step = False
        self.bar.n = step_done
        self.bar.refresh()

    def phase(self, name):
        if name == "compiling":
            self.bar.set_description_str(COMPILING_TEXT)
            return
        self.bar.set_description_str("sampling", refresh=False)
        self.bar.reset()  # restarts the clock
        self._first_step = True


def _progress_bar(total, enabled):
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc="sampling", unit="step", file=sys.stderr, leave=False)
    return _ProgressBar(bar), bar.close


def check_generate_arguments(args):
    """Every check of ``generate``'s arguments that needs neither Keras nor the model; returns the output paths.

    Raises InputError (one line naming the argument) for bad sizes, steps, CFG scale, strength, batch count,
    sampler name, model, LoRA files, prompt syntax and ``<lora:...>`` tags, input images and output path.
    """
    from sd_keras.pipeline import check_guidance, check_size, check_steps, check_strength, load_image
    from sd_keras.schedulers import get_sampler

    if args.width is not None or args.height is not None:  # 0 is an invalid size, not "the default"
        check_size(64 if args.height is None else args.height, 64 if args.width is None else args.width)
    check_steps(args.steps)
    check_guidance(args.cfg_scale)
    check_strength(args.strength)
    if args.batch_count < 1:
        raise InputError(f"-b/--batch-count must be >= 1, got {args.batch_count}")
    get_sampler(args.sampling_method, args.steps)  # InputError listing the known names
    if args.mask and not args.init_img:
        raise InputError("--mask needs --init-img")
    kind = check_model_spec(args.model, prediction_type=args.prediction_type, ema=args.ema)
    check_lora_target(args, kind)
    lora_specs(args)
    check_prompts(args, [args.prompt], [args.negative_prompt], kind)
    for flag, image in (("--init-img", args.init_img), ("--mask", args.mask)):
        if image:
            load_image(image, name=flag)  # unreadable, or too large, before minutes of loading
    hires_of(args)
    return check_output_paths(args.output, args.batch_count)


def hires_of(args):
    """The ``sd_keras.hires.HiresFix`` of the ``--hires-*`` flags (None without ``--hires-scale`` /
    ``--hires-resize``); InputError for bad values, for hires with ``--init-img``, and for a target size that is
    not a multiple of 64 when ``-W`` / ``-H`` are given."""
    if args.hires_scale is None and args.hires_resize is None:
        return None
    from sd_keras.generator import check_size
    from sd_keras.hires import HiresFix

    if args.init_img:
        raise InputError("--hires-scale / --hires-resize apply to text-to-image, not to --init-img")
    resize_x = resize_y = 0
    if args.hires_resize is not None:
        try:
            resize_x, resize_y = (int(side) for side in args.hires_resize.lower().split("x"))
        except ValueError:
            raise InputError(f"--hires-resize {args.hires_resize!r}: give WIDTHxHEIGHT, e.g. 1024x1024 (0 for a "
                             "side: keep the aspect ratio)") from None
    hires = HiresFix(scale=2.0 if args.hires_scale is None else args.hires_scale, upscaler=args.hires_upscaler,
                     denoising_strength=args.hires_strength, second_pass_steps=args.hires_steps,
                     resize_x=resize_x, resize_y=resize_y, sampler=args.hires_sampler,
                     prompt=args.hires_prompt or None, negative_prompt=args.hires_negative_prompt or None)
    if args.width is not None and args.height is not None:
        height, width = hires.target_size(args.height, args.width)
        try:
            check_size(height, width)
        except InputError as error:
            raise InputError(f"hires target size {width}x{height} (first pass {args.width}x{args.height}): "
                             f"{error}") from None
    return hires


def cmd_generate(args):
    paths = check_generate_arguments(args)

    import numpy as np

    import sd_keras
    from sd_keras import backend, metadata, noise
    from sd_keras.weights.checkpoints import printing_notes

    backend.use_devices(args.devices)  # before the model is built: weights are replicated per device
    with printing_notes(sys.stderr):  # what a checkpoint's loading infers or chooses
        model = sd_keras.load(args.model, dtype=args.dtype, prediction_type=args.prediction_type, ema=args.ema)
    apply_lora_arguments(model, args)
    model.prompt_syntax, model.lora_dir = prompt_syntax_of(args), args.lora_dir
    model.tiled_vae = args.tiled_vae
    hires = hires_of(args)
    if hires is None:
        # the size from the model when left out; the note is printed here, once, instead of the API's warning
        from sd_keras.generator import native_size_note

        note = native_size_note(model.config, args.height or model.config.image_size[0],
                                args.width or model.config.image_size[1])
        if note:
            print(f"warning: {note}", file=sys.stderr, flush=True)
    seed = noise.random_seed() if args.seed is None or args.seed < 0 else args.seed
    height = model.config.image_size[0] if args.height is None else args.height
    width = model.config.image_size[1] if args.width is None else args.width
    common = dict(negative_prompt=args.negative_prompt or None, batch_size=args.batch_count,
                  num_steps=args.steps, unconditional_guidance_scale=args.cfg_scale, seed=seed,
                  sampler=args.sampling_method, height=height, width=width)
    total_steps = args.steps
    if hires is not None:  # the second pass's steps follow the first pass's on one bar
        from sd_keras.schedulers import get_sampler

        second = get_sampler(hires.sampler or args.sampling_method, hires.second_pass_steps or args.steps)
        total_steps += second.num_steps - min(second.num_steps, second.start_index(hires.denoising_strength))
    progress, close = _progress_bar(total_steps,
                                    args.progress and sys.stderr.isatty() or args.progress == "always")
    try:
        if args.init_img and args.mask:
            images = model.inpaint(args.prompt, args.init_img, args.mask, strength=args.strength, progress=progress,
                                   **common)
        elif args.init_img:
            images = model.image_to_image(args.prompt, args.init_img, args.strength, progress=progress, **common)
        else:
            import warnings

            from sd_keras.generator import AboveNativeSizeWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AboveNativeSizeWarning)  # printed above
                images = model.text_to_image(args.prompt, progress=progress, hires=hires, **common)
    finally:
        close()
    settings = {"Steps": args.steps, "Sampler": args.sampling_method, "CFG scale": args.cfg_scale}
    for i, (image, path) in enumerate(zip(np.asarray(images), paths)):
        extra = {"Denoising strength": args.strength} if args.init_img else {}
        if hires is not None:
            extra = hires.parameters(args.steps)
        text = metadata.format_parameters(args.prompt, args.negative_prompt or None, **settings, Seed=seed + i,
                                          Size=f"{width}x{height}", Model=os.path.basename(args.model.rstrip("/")),
                                          **extra)
        metadata.save_png(image, path, text)
        print(f"{path}\n{text}", flush=True)
    return 0


def register(subparsers):
    """Add ``generate`` to the ``sd-keras`` command line."""
    cli = defaults.CLI
    gen = subparsers.add_parser(
        "generate", help="text-to-image, image-to-image and inpainting",
        description="Generate images and write them as PNGs with their AUTOMATIC1111-style parameters. Defaults "
                    "are AUTOMATIC1111's web UI's (the Python API keeps KerasCV's: 50 steps, guidance 7.5, DDIM).")
    gen.add_argument("-p", "--prompt", required=True)
    gen.add_argument("-n", "--negative-prompt", default="")
    gen.add_argument("-m", "--model", default=defaults.MODEL,
                     help="preset name, checkpoint path or bundle folder (default: %(default)s)")
    gen.add_argument("-s", "--seed", type=int, default=cli.seed, help="-1 for a random seed (default: %(default)s)")
    gen.add_argument("-W", "--width", type=int, help="multiple of 64 (default: the model's native width)")
    gen.add_argument("-H", "--height", type=int, help="multiple of 64 (default: the model's native height)")
    gen.add_argument("--steps", type=int, default=cli.steps, help="sampling steps (default: %(default)s)")
    gen.add_argument("--cfg-scale", type=float, default=cli.cfg_scale,
                     help="classifier-free guidance scale (default: %(default)s)")
    gen.add_argument("--sampling-method", default=cli.sampler, help="sampler name (default: %(default)s)")
    gen.add_argument("-b", "--batch-count", type=int, default=1)
    gen.add_argument("-o", "--output", default="output.png",
                     help="PNG path (missing folders are created); %%d is replaced by the image index "
                          "(default: %(default)s)")
    gen.add_argument("-i", "--init-img")
    gen.add_argument("--strength", type=float, default=cli.strength,
                     help="how much of --init-img is redrawn, in [0, 1] (default: %(default)s)")
    gen.add_argument("--mask")
    hires = gen.add_argument_group("hires fix", "draw at -W x -H, upscale, redraw at the target size "
                                                "(AUTOMATIC1111's hires fix)")
    hires.add_argument("--hires-scale", type=float, help="target size / first-pass size, e.g. 2")
    hires.add_argument("--hires-resize", metavar="WxH",
                       help="target size instead of --hires-scale (0 for a side keeps the aspect ratio)")
    hires.add_argument("--hires-upscaler", default="Latent",
                       help="Latent, Latent (bicubic), Latent (nearest-exact), Lanczos, Nearest, or an upscaler "
                            "file (.pth / .safetensors) (default: %(default)s)")
    hires.add_argument("--hires-strength", type=float, default=0.7,
                       help="denoising strength of the second pass, in [0, 1] (default: %(default)s)")
    hires.add_argument("--hires-steps", type=int, default=0,
                       help="steps of the second pass's schedule (0: as many as --steps) (default: %(default)s)")
    hires.add_argument("--hires-sampler", help="sampler of the second pass (default: --sampling-method)")
    hires.add_argument("--hires-prompt", help="prompt of the second pass (default: --prompt)")
    hires.add_argument("--hires-negative-prompt", help="negative prompt of the second pass (default: "
                                                      "--negative-prompt)")
    gen.add_argument("--tiled-vae", dest="tiled_vae", action="store_true", default=None,
                     help="decode and encode in tiles (less memory, approximate; default: automatic above "
                          "1024x1024 pixels)")
    gen.add_argument("--no-tiled-vae", dest="tiled_vae", action="store_false", help="never tile the VAE")
    gen.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    add_lora_argument(gen)
    add_prompt_syntax_arguments(gen, cli.prompt_syntax)
    add_checkpoint_arguments(gen)
    gen.add_argument("--devices", default=None, help="'all' or a count: data-parallel over local GPUs (JAX)")
    gen.add_argument("--progress", nargs="?", const="always", default=True,
                     help="progress bar (on when stderr is a terminal; --progress forces it)")
    gen.add_argument("--no-progress", dest="progress", action="store_false")
    gen.set_defaults(func=cmd_generate)
    return gen
