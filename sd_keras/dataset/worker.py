"""``ShardWorker``: one loaded model that turns the images of a shard into shard records.

The same class runs in the local job and in each Ray actor, so both write the same shards. A shard's images are
grouped by program (size, steps, sampler, guidance scale) into batches of exactly ``batch_size`` (the last batch
of a group is padded with copies of its last image, whose results are dropped): each shape compiles one loop, one
text-encoder and one decoder program, reused by every later batch. Prompts and negative prompts of a batch are
encoded in one call each. Image ``i`` gets the noise of a single generation with its own seed (``sd_keras.noise``),
so where it sits in a batch does not change what it shows.
"""

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from sd_keras.dataset import table as table_lib
from sd_keras.errors import InputError


def model_identity(model, name):
    """``{"name", "config", "dtype", "sha256"}``: the sha256 covers every weight (name, shape, dtype, bytes) of
    the text encoder, UNet and decoder (of a LiteRT bundle: its manifest's file hashes), so two datasets made with
    the same weights say so."""
    digest = hashlib.sha256()
    if not hasattr(model, "diffusion_model"):  # a bundle runner: its manifest lists every file's sha256
        digest.update(json.dumps(getattr(model, "manifest", {}), sort_keys=True, default=str).encode("utf-8"))
    for part in (getattr(model, "text_encoder", None), getattr(model, "diffusion_model", None),
                 getattr(model, "decoder", None)):
        for variable in getattr(part, "weights", ()):
            value = np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)
            digest.update(f"{variable.path}:{value.shape}:{value.dtype}\n".encode("utf-8"))
            digest.update(np.ascontiguousarray(value).tobytes())
    return {"name": name, "config": model.config.name, "dtype": getattr(model, "dtype", "float32"),
            "sha256": digest.hexdigest()}


class ShardWorker:
    """Generates shards with one model.

    Args:
        model: a ``Generator`` (``StableDiffusion``, ``BundleRunner``) or a spec for ``sd_keras.load``.
        batch_size: images per compiled batch.
        quality_filter: None or ``callable(image, item) -> (keep, verdict)`` (see ``sd_keras.dataset.quality``).
        model_name: the name recorded for a model object (default: its config's name).
    """

    def __init__(self, model, *, batch_size=8, quality_filter=None, model_name=None, dtype="float32"):
        if isinstance(model, str):
            from sd_keras import loading

            model_name = model_name or model
            model = loading.load(model, dtype=dtype)
        if model.unet_in_channels != model.latent_channels:
            raise InputError("model: an inpainting UNet (9 input channels) cannot make a text-to-image dataset")
        self.model = model
        self.batch_size = batch_size
        self.quality_filter = quality_filter
        # hashing every weight takes seconds (SD 1.x in float32: 4 GB read back from the accelerator and hashed):
        # it runs beside the first batches, and ``identity`` waits for it
        hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sd-keras-model-hash")
        self._identity = hashing.submit(model_identity, model, model_name or model.config.name)
        hashing.shutdown(wait=False)
        self.compiled_groups = set()

    @property
    def identity(self):
        """``model_identity`` of the model (waits for the hash)."""
        return self._identity.result()

    def compilations(self):
        """Programs compiled so far (a LiteRT bundle compiles none)."""
        programs = getattr(self.model, "programs", None)
        return programs.compilations if programs is not None else 0

    def native_size(self):
        return tuple(self.model.config.image_size)

    def run_shard(self, items, on_batch=None):
        """Generate ``items`` (one shard's) batch by batch.

        ``on_batch(batch_items, images, failure, seconds, compiled)`` is called after every batch with the
        uint8 images of the real (not padding) items, or ``images=None`` and the reason when the batch failed;
        ``compiled`` tells whether the batch compiled a program (its time is not a throughput sample).
        """
        height, width = self.native_size()
        for group, batch in table_lib.batches(items, self.batch_size):
            group_key = (group[0] or height, group[1] or width) + group[2:]
            if on_batch is not None and group_key not in self.compiled_groups:
                getattr(on_batch, "compiling", lambda key: None)(group_key)
            before, started = self.compilations(), time.perf_counter()
            try:
                images, failure = self.generate_batch(batch), None
            except FloatingPointError as error:  # NaN/inf in a batch: its images are rejected, the job goes on
                images, failure = None, f"generation failed: {error}"
            self.compiled_groups.add(group_key)
            seconds = time.perf_counter() - started
            if on_batch is not None:
                on_batch(batch, images, failure, seconds, self.compilations() != before)

    def generate_batch(self, items):
        """uint8 (len(items), H, W, 3) images of ``items`` (one group), run as a padded batch of ``batch_size``."""
        from sd_keras import noise as noise_lib

        model = self.model
        first = items[0]
        padded = list(items) + [items[-1]] * (self.batch_size - len(items))
        # the Generator contract (sd_keras.generator): the model's scheduler (its own noise schedule), prompt ->
        # contexts, the engine's loop, decode with its NaN check; the table checks validated the settings, and the
        # noise is drawn here, one seed per image
        height = first.height or model.config.image_size[0]
        width = first.width or model.config.image_size[1]
        scheduler = model._scheduler(first.sampler, first.steps)
        context, unconditional = model._contexts([item.prompt for item in padded],
                                                 [item.negative_prompt for item in padded])
        latent_shape = (height // 8, width // 8, model.latent_channels)
        draws = scheduler.num_steps if scheduler.needs_noise else 0
        noises = [noise_lib.latent_noise(item.seed, 1, latent_shape, draws) for item in padded]
        initial = np.concatenate([initial for initial, _ in noises])
        step_noise = np.concatenate([steps for _, steps in noises], axis=1) if draws else None
        latent = model._denoise(scheduler, context, unconditional, initial * np.float32(scheduler.init_noise_sigma),
                                step_noise, guidance_scale=first.cfg_scale)
        return model.decode(latent)[:len(items)]

    def records(self, items, images):
        """Shard records ``(key, png, metadata)`` of generated images, after the quality filter; and the filtered
        out entries ``{"index", "row", "verdict"}``."""
        from sd_keras import metadata as metadata_lib
        from sd_keras.dataset.shards import encode_png

        records, filtered = [], []
        for item, image in zip(items, images):
            height, width = image.shape[:2]
            verdict = None
            if self.quality_filter is not None:
                keep, verdict = self.quality_filter(image, item)
                if not keep:
                    filtered.append({"index": item.index, "row": item.row, "verdict": verdict})
                    continue
            parameters = metadata_lib.format_parameters(
                item.prompt, item.negative_prompt or None, Steps=item.steps, Sampler=item.sampler,
                **{"CFG scale": item.cfg_scale, "Seed": item.seed, "Size": f"{width}x{height}",
                   "Model hash": self.identity["sha256"][:10], "Model": self.identity["name"]})
            info = {"key": item.key, "index": item.index, "row": item.row, "prompt": item.prompt,
                    "negative_prompt": item.negative_prompt, "seed": item.seed, "steps": item.steps,
                    "cfg_scale": item.cfg_scale, "sampler": item.sampler, "width": width, "height": height,
                    "parameters": parameters, "labels": item.labels,
                    "model": {"name": self.identity["name"], "sha256": self.identity["sha256"]}}
            if verdict is not None:
                info["quality"] = verdict
            records.append((item.key, encode_png(image, parameters), info))
        return records, filtered

    def make_shard(self, folder, index, first, end, items, output_format, validation_rejects=()):
        """Generate and write one whole shard (the Ray actors' unit of work); returns its manifest entry."""
        from sd_keras.dataset import shards as shard_io

        collected, rejected, filtered = [], [], []

        def on_batch(batch, images, failure, seconds, compiled):
            if images is None:
                rejected.extend({"index": item.index, "row": item.row, "reason": failure} for item in batch)
                return
            records, dropped = self.records(batch, images)
            collected.extend(records)
            filtered.extend(dropped)

        self.run_shard(items, on_batch)
        return finish_shard(shard_io, folder, index, first, end, output_format, collected, rejected, filtered,
                            validation_rejects)


def finish_shard(shard_io, folder, index, first, end, output_format, records, rejected, filtered,
                 validation_rejects):
    """Write a shard's records (sorted by key) and return its manifest entry."""
    records = sorted(records, key=lambda record: record[0])
    written = shard_io.write_shard(folder, index, output_format, records)
    rejects = [dict(reject) for reject in validation_rejects] + list(rejected)
    return {"index": index, "first": first, "end": end, "written": len(records),
            "rejected": sorted(rejects, key=lambda reject: reject["index"]),
            "filtered": sorted(filtered, key=lambda entry: entry["index"]), **written}
