"""``sd-keras dataset``: a prompt table (or a template) → a sharded, resumable image dataset.

Runs ``sd_keras.dataset.generate`` on this host (``--devices all``: data-parallel over its GPUs) or on a Ray
cluster (``--ray auto|ADDRESS``). Bad table rows do not stop the job: they go to ``OUT/rejects.jsonl`` with their
reason. Per-row generation settings come from the table's columns; the options give what an empty cell means.

Examples:
    $ sd-keras dataset prompts.csv -o data/ --shard-size 1000 -b 8
    $ sd-keras dataset --template "a {color} {shape} on a {bg} background" --var color=@shapes \\
          --var shape=@shapes --var bg=gray,white -o shapes_data/ --filter shapes
    $ sd-keras dataset prompts.parquet -o data/ --resume           # after a crash: finished shards are kept
    $ sd-keras dataset prompts.jsonl -o /shared/data/ --ray auto --ray-gpus-per-worker 1
"""

from sd_keras import defaults
from sd_keras.errors import InputError


def _variables(specs):
    values = {}
    for spec in specs:
        name, separator, text = spec.partition("=")
        name = name.strip()
        if not separator or not name or not text.strip():
            raise InputError(f"--var {spec!r}: expected NAME=VALUE,VALUE,... or NAME=@shapes")
        if name in values:
            raise InputError(f"--var {name}: given twice")
        values[name] = "@shapes" if text.strip() == "@shapes" else [value.strip() for value in text.split(",")]
    return values


def cmd_dataset(args):
    from sd_keras import dataset
    from sd_keras.cli.arguments import check_model_spec

    if (args.table is None) == (args.template is None):
        raise InputError("give a table file or --template (one of them)")
    if args.var and args.template is None:
        raise InputError("--var needs --template")
    check_model_spec(args.model)
    table = args.table
    if args.template is not None:
        table = dataset.expand_template(args.template, _variables(args.var))
    output_format = "imagefolder" if args.hf else args.format
    progress = args.progress if args.progress in (True, False) else True
    manifest = dataset.generate(
        table, args.output, model=args.model, output_format=output_format, shard_size=args.shard_size,
        batch_size=args.batch_size, base_seed=args.seed, steps=args.steps, cfg_scale=args.cfg_scale,
        sampler=args.sampling_method, width=args.width, height=args.height, negative_prompt=args.negative_prompt,
        num_images=args.num_images, resume=args.resume, quality_filter=args.filter, devices=args.devices,
        ray=args.ray, ray_workers=args.ray_workers, ray_gpus_per_worker=args.ray_gpus_per_worker, dtype=args.dtype,
        progress=progress)
    counts, timing = manifest["counts"], manifest["timing"]
    rate = "" if timing["rows_per_second"] is None else f", {timing['rows_per_second']:.2f} rows/s"
    print(f"{args.output}: {counts['written']} images in {manifest['num_shards']} shards, {counts['rejected']} "
          f"rejected (rejects.jsonl), {counts['filtered']} filtered out; this run: {timing['images_this_run']} "
          f"images in {timing['seconds']:.1f} s{rate} (compiling {timing['compile_seconds']:.1f} s)", flush=True)
    return 0


def register(commands):
    parser = commands.add_parser("dataset", help="a prompt table or template → sharded image dataset (resumable, "
                                                 "local GPUs or Ray)",
                                 description="A prompt table (CSV, TSV, JSONL, Parquet) or a template to a sharded, "
                                             "resumable image dataset (WebDataset, Parquet or imagefolder shards "
                                             "with a manifest), on this host or a Ray cluster. Table columns "
                                             "override the options per row; bad rows go to OUT/rejects.jsonl.")
    parser.add_argument("table", nargs="?", help="CSV, TSV, JSONL or Parquet file with a 'prompt' column")
    parser.add_argument("--template", help='prompt template, e.g. "a {color} {shape}" (with --var)')
    parser.add_argument("--var", action="append", default=[], metavar="NAME=V1,V2|@shapes",
                        help="values of a template variable (@shapes: the shapes model's vocabulary); repeatable")
    parser.add_argument("-o", "--output", required=True, help="dataset folder (shards, manifest.json, rejects.jsonl)")
    parser.add_argument("-m", "--model", default=defaults.MODEL, help="preset name, checkpoint path or bundle folder")
    parser.add_argument("--format", default="webdataset", choices=["webdataset", "parquet", "imagefolder"],
                        help="shard format (default: WebDataset tar shards of KEY.png + KEY.json)")
    parser.add_argument("--hf", action="store_true",
                        help="Hugging Face imagefolder layout (folders of PNGs + metadata.jsonl); --format imagefolder")
    parser.add_argument("--shard-size", type=int, default=1000, help="image numbers per shard (default 1000)")
    parser.add_argument("-b", "--batch-size", type=int, default=8, help="images per compiled batch (default 8)")
    parser.add_argument("-s", "--seed", type=int, default=0,
                        help="base seed: image i without a seed cell uses seed + i (default 0)")
    parser.add_argument("--steps", type=int, default=defaults.CLI.steps)
    parser.add_argument("--cfg-scale", type=float, default=defaults.CLI.cfg_scale)
    parser.add_argument("--sampling-method", default=defaults.CLI.sampler)
    parser.add_argument("-W", "--width", type=int, help="default: the model's native size")
    parser.add_argument("-H", "--height", type=int)
    parser.add_argument("-n", "--negative-prompt", default="")
    parser.add_argument("--num-images", type=int, default=1, help="images per row without a num_images cell")
    parser.add_argument("--resume", action="store_true",
                        help="continue the job in --output: keep finished shards (sha256 checked), make the rest")
    parser.add_argument("--filter", default=None, metavar="shapes|MODULE:FUNCTION",
                        help="keep only images a judge accepts: 'shapes' (sd_keras.evaluate's measures, shapes "
                             "model) or your function(image, item) -> bool or (bool, verdict)")
    parser.add_argument("--devices", default=None, help="'all' or a count: data-parallel over local GPUs (JAX)")
    parser.add_argument("--ray", default=None, metavar="auto|ADDRESS",
                        help="run on a Ray cluster (pip install 'sd_keras[ray]'); every node must see --output")
    parser.add_argument("--ray-workers", type=int, default=None, help="Ray actors (default: one per CPU or GPU)")
    parser.add_argument("--ray-gpus-per-worker", type=float, default=0, help="GPUs per Ray actor (1 on GPUs)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=True,
                        help="no progress output (default: a bar on a terminal, else a line per shard)")
    parser.set_defaults(func=cmd_dataset)
