"""The compiled denoising loop.

One compiled program (XLA; for large models on a CPU-only TensorFlow a TensorFlow graph, see
``backend.tf_uses_xla``) runs every step of a generation: the classifier-free-guidance pair as one batched UNet call,
guidance, the scheduler update and (for inpainting with a plain UNet) the re-blend of the known region. The UNet
weights are arguments of the program (``stateless_call``), so a second call with the same shapes neither retraces
nor recompiles, and loading new weights of the same architecture reuses the compiled program.

A program is cached per (sampler tables, mode, progress, input shape): the (batch, size, steps, sampler, mode)
key of the design. The programs live in a ``ProgramCache``, unbounded by default; ``ProgramCache(max_size=N)``
keeps the N most recently used and drops the others (``sd-keras serve --max-programs``).
"""

import collections
import hashlib
import threading
import time

import keras
import numpy as np
from keras import ops

from sd_keras import backend
from sd_keras.generator import BLEND, CONCAT, TXT2IMG  # noqa: F401 (the loop's modes, named by the generation base)
from sd_keras.models.layers import timestep_embedding


class ProgramCache:
    """Compiled programs by key; with ``max_size``, the least recently used one is dropped past that many.

    A dropped program loses every reference held here, so its compiled code and buffers can be reclaimed (the
    backends' own caches hold programs weakly). ``compilations`` counts the programs built over the cache's life.

    Example:
        >>> cache = ProgramCache(max_size=2)
        >>> for key in "abca":
        ...     _ = cache.get(key, lambda: object())
        >>> len(cache), cache.compilations, cache.evictions
        (2, 4, 2)
    """

    def __init__(self, max_size=None):
        self._programs = collections.OrderedDict()
        self._lock = threading.Lock()
        self.max_size = None
        self.compilations = 0
        self.evictions = 0
        self.resize(max_size)

    def __len__(self):
        return len(self._programs)

    def __contains__(self, key):
        return key in self._programs

    def peek(self, key):
        """The program held for ``key``, or None; builds nothing and leaves the order of use as it is."""
        with self._lock:
            return self._programs.get(key)

    def resize(self, max_size):
        """Hold at most ``max_size`` programs from now on (None: no bound); drops the oldest ones over it."""
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1):
            raise ValueError(f"max_size must be a positive integer or None, got {max_size!r}")
        with self._lock:
            self.max_size = max_size
            self._evict()

    def clear(self):
        with self._lock:
            self._programs.clear()

    def get(self, key, build):
        """The program for ``key``, built with ``build()`` when not held (and marked most recently used)."""
        with self._lock:
            program = self._programs.get(key)
            if program is not None:
                self._programs.move_to_end(key)
                return program
        program = build()
        with self._lock:
            self._programs[key] = program
            self._programs.move_to_end(key)
            self.compilations += 1
            self._evict()
        return program

    def _evict(self):
        while self.max_size is not None and len(self._programs) > self.max_size:
            self._programs.popitem(last=False)
            self.evictions += 1


# What a ``progress`` callback with a ``phase`` method hears before the steps: ``progress.phase(COMPILING)`` when
# the loop compiles a program for a new shape (its first run: seconds on a GPU, up to a minute on a CPU), then
# ``progress.phase(SAMPLING)`` when the steps start. Step times, and so ETAs, count from the latter.
COMPILING, SAMPLING = "compiling", "sampling"


def _tell_phase(progress, phase):
    hook = getattr(progress, "phase", None)
    if callable(hook):
        hook(phase)


class _Program:
    """A compiled program and whether it has run yet (its first run compiles it)."""

    __slots__ = ("function", "compiled")

    def __init__(self, function):
        self.function, self.compiled = function, False

    def __call__(self, *args):
        result = self.function(*args)
        self.compiled = True
        return result


def _shape_key(value):
    if isinstance(value, dict):
        return tuple((key, _shape_key(value[key])) for key in sorted(value))
    if isinstance(value, (list, tuple)):
        return tuple(_shape_key(item) for item in value)
    return (tuple(value.shape), str(value.dtype)) if hasattr(value, "shape") else type(value).__name__


def _sampler_key(sampler):
    digest = hashlib.sha1()
    for key, value in sorted(sampler.tables().items()):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return (type(sampler).__name__, int(sampler.num_steps), bool(sampler.needs_noise), digest.hexdigest())


def _compute_dtype(model):
    dtypes = {layer.dtype_policy.compute_dtype for layer in model.layers if layer.weights}
    return dtypes.pop() if len(dtypes) == 1 else "float32"


def _cast_floats(values, dtype):
    if dtype == "float32":
        return values
    return [ops.cast(v, dtype) if str(v.dtype) == "float32" else v for v in values]


# The compiled loop reports progress to the host at most this many times per generation: on a GPU each report
# drains the device's queue until the host has taken it and launched the next kernels, about 2 ms on an H200 (a
# 50-step SD 1.x batch-1 generation takes 0.37 s): a report after every step cost 10 %, ten reports 4.5 %, five
# 3.4 %.
MAX_PROGRESS_REPORTS = 4


# ... and no more often than every this many seconds, once a generation of the same shape has been timed.
MIN_PROGRESS_SECONDS = 0.25


def progress_interval(num_steps, seconds_per_step=None):
    """Steps between two progress reports (the last step always reports).

    At most ``MAX_PROGRESS_REPORTS`` reports, and, when ``seconds_per_step`` is known (the last generation of the
    same shape), none closer than ``MIN_PROGRESS_SECONDS``: a report's cost is then a bounded share of the time.
    """
    steps = max(1, int(num_steps))
    every = -(-steps // MAX_PROGRESS_REPORTS)
    if seconds_per_step:
        every = max(every, int(np.ceil(MIN_PROGRESS_SECONDS / seconds_per_step)))
    return min(every, steps)


def _pairs(first, second):
    """``(B, ...)`` and ``(B, ...)`` -> ``(2B, ...)`` ordered first[0], second[0], first[1], second[1], ...

    The classifier-free-guidance batch keeps each image's (unconditional, conditional) pair side by side, so a
    batch sharded over several devices (data parallel) splits into whole pairs and no step moves data between
    devices (concatenating the halves instead would put every unconditional row on the first device).
    """
    return ops.reshape(ops.stack([first, second], axis=1), (-1,) + tuple(first.shape[1:]))


def _num_params(model):
    return int(sum(int(np.prod(variable.shape)) for variable in model.weights))


def model_state(model):
    """The weight values of ``model`` in the form ``stateless_call`` takes."""
    return (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
    )


class DenoisingLoop:
    """Runs the sampling loop of one diffusion model as a compiled program.

    Example:
        >>> loop = DenoisingLoop(diffusion_model)                                  # doctest: +SKIP
        >>> latent = loop(sampler, context, unconditional_context, latent, noise,  # doctest: +SKIP
        ...               guidance_scale=7.5)
    """

    def __init__(self, diffusion_model, programs=None):
        self.diffusion_model = diffusion_model
        self.timestep_dim = int(diffusion_model.input["timestep_embedding"].shape[-1])
        self.trace_count = 0  # incremented each time a program is traced; tests read it
        self.programs = programs if programs is not None else ProgramCache()  # may be shared with others
        self._progress_sink = None
        self._reported = 0
        self._cast = None
        self._seconds_per_step = {}  # (sampler, mode, latent shape) -> seconds, from the last uncompiled run
        self._num_params = _num_params(diffusion_model)

    # -- the program -----------------------------------------------------------------------------------------
    def _build(self, sampler, mode, with_callback):
        model = self.diffusion_model
        timesteps = np.asarray(sampler.timesteps, dtype=np.float32)

        compute_dtype = _compute_dtype(model)

        def program(weights, latent, state, context, unconditional_context, noise, guidance_scale, start, stop,
                    every, extra):
            self.trace_count += 1
            # Weights held in float32 under a half compute policy (a mixed policy) are cast once per generation
            # rather than in every step (XLA folds the per-layer round trip of an already-cast value away).
            trainable, non_trainable = (_cast_floats(part, compute_dtype) for part in weights)
            batch = ops.shape(latent)[0]
            both_contexts = _pairs(unconditional_context, context)
            guidance = ops.cast(guidance_scale, "float32")

            def body(i, carry):
                latent, state = carry
                t = ops.take(ops.convert_to_tensor(timesteps), i)
                t_embedding = timestep_embedding(ops.reshape(t, (1,)), self.timestep_dim)
                t_embedding = ops.repeat(t_embedding, 2 * batch, axis=0)
                model_input = sampler.scale_model_input(latent, i)
                if mode == CONCAT:
                    model_input = ops.concatenate([model_input, extra["cond"]], -1)
                inputs = {"latent": _pairs(model_input, model_input), "timestep_embedding": t_embedding,
                          "context": both_contexts}
                if "text_embeds" in extra:  # SDXL's added conditioning, paired as the contexts are
                    inputs["text_embeds"] = _pairs(extra["uncond_text_embeds"], extra["text_embeds"])
                    inputs["time_ids"] = _pairs(extra["uncond_time_ids"], extra["time_ids"])
                outputs, _ = model.stateless_call(trainable, non_trainable, inputs)
                outputs = ops.reshape(ops.cast(outputs, "float32"), (batch, 2) + tuple(outputs.shape[1:]))
                unconditional, conditional = outputs[:, 0], outputs[:, 1]
                prediction = unconditional + guidance * (conditional - unconditional)
                step_noise = ops.take(noise, i, axis=0) if sampler.needs_noise else None
                latent, state = sampler.step(latent, prediction, i, state, step_noise)
                if mode == BLEND:
                    known = sampler.add_noise(extra["original"], extra["noise"], i + 1)
                    latent = extra["mask"] * latent + (1.0 - extra["mask"]) * known
                return latent, state

            if not with_callback:
                return ops.fori_loop(start, stop, body, (latent, state))

            # Progress: an outer loop over chunks of ``every`` steps, reporting after each chunk. (A condition
            # inside the step loop would make a GPU hand its predicate to the host at every step.)
            def chunk(c, carry):
                first = start + c * every
                last = ops.minimum(first + every, stop)
                carry = ops.fori_loop(first, last, body, carry)
                backend.loop_callback(self._on_step, last - 1)
                return carry

            chunks = (stop - start + every - 1) // every
            return ops.fori_loop(0, chunks, chunk, (latent, state))

        return backend.jit(program, num_params=self._num_params)

    def _on_step(self, i):
        # Reports arrive every few steps (``progress_interval``); the caller still hears of every step, in order.
        if self._progress_sink is not None:
            for step in range(self._reported + 1, int(i) + 2):
                self._progress_sink(step)
            self._reported = max(self._reported, int(i) + 1)

    def _key(self, sampler, mode, with_callback, shapes):
        return (id(self), _sampler_key(sampler), mode, with_callback, _shape_key(shapes))

    def _program(self, sampler, mode, with_callback, shapes):
        key = self._key(sampler, mode, with_callback, shapes)
        return self.programs.get(key, lambda: _Program(self._build(sampler, mode, with_callback)))

    def _compiled(self, sampler, mode, with_callback, shapes):
        """Whether this shape's program (with or without progress reports) has been compiled already."""
        program = self.programs.peek(self._key(sampler, mode, with_callback, shapes))
        return program is not None and program.compiled

    def _start(self, program, progress, weights, latent, state, args, every, extra):
        """Tell ``progress`` that the steps start; first compile ``program`` by running it for zero steps when this
        is its first run, telling ``progress`` so (the zero-step run costs a few array copies)."""
        if progress is not None and not program.compiled:
            _tell_phase(progress, COMPILING)
            backend.wait(program(weights, latent, state, *args, np.int32(0), np.int32(0), np.int32(every), extra)[0])
        if progress is not None:
            _tell_phase(progress, SAMPLING)

    # -- running it ------------------------------------------------------------------------------------------
    def __call__(self, sampler, context, unconditional_context, latent, noise=None, *, guidance_scale=7.5,
                 start_index=0, mode=TXT2IMG, extra=None, progress=None, added=None, stop_index=None):
        """Denoise ``latent`` from step ``start_index`` to ``stop_index`` (None: the end) and return the latent
        (float32).

        Args:
            sampler: a scheduler from ``sd_keras.schedulers``.
            context, unconditional_context: text encoder outputs, (B, 77, D) each.
            latent: the starting latent (B, h, w, 4), already scaled/noised for ``start_index``.
            noise: (num_steps, B, h, w, 4) per-step unit noise for ancestral samplers (else ignored).
            guidance_scale: classifier-free guidance scale.
            start_index: first step to run (image-to-image starts later).
            stop_index: the step to stop before (None: ``sampler.num_steps``); SDXL's ``denoising_end`` stops early
                and hands the latent to a refiner.
            added: the added conditioning of an SDXL UNet, arguments of the program like the contexts:
                ``text_embeds`` / ``uncond_text_embeds`` (B, pooled_dim) and ``time_ids`` / ``uncond_time_ids``
                (B, num_time_ids); None for SD 1.x / 2.x (their programs are unchanged).
            mode: ``"txt2img"`` (also image-to-image), ``"blend"`` (inpainting with a plain UNet: ``extra`` has
                ``original`` latent, ``noise`` (B,h,w,4) and ``mask`` (B,h,w,1), 1 = repaint) or ``"concat"``
                (9-channel inpainting UNet: ``extra["cond"]`` is the (B,h,w,5) mask + masked-image latent).
            progress: ``callable(step_done)`` or None, called once for every step, in order, in groups of
                ``progress_interval(num_steps, seconds_per_step)`` steps (at most 4 groups, none shorter than
                0.25 s once a generation of this shape has been timed; a faster generation runs without reports
                and then reports every step at the end, or, where only this shape's reporting program has been
                compiled so far, runs that one with a single report at the last step rather than compiling
                another). The compiled loop reports to the host from inside (JAX;
                TensorFlow graphs: large models on a CPU-only TensorFlow); with TensorFlow's XLA, whose programs
                cannot call Python, the same program runs that many steps per call. If ``progress`` has a
                ``phase`` method, it is called with ``"compiling"`` before the first run of a shape compiles
                (then the program is compiled on its own, by a run of zero steps) and with ``"sampling"`` when
                the steps start, so a progress display can say why it waits and time the steps alone.
        """
        num_steps = int(sampler.num_steps) if stop_index is None else int(stop_index)
        latent = np.asarray(latent, dtype=np.float32)
        if noise is None or not sampler.needs_noise:
            noise = np.zeros((1,) + latent.shape, np.float32)
        extra = {k: np.asarray(v, np.float32) for k, v in (extra or {}).items()}
        if mode == TXT2IMG:
            extra = {"unused": np.zeros((1,), np.float32)}
        if added:
            extra.update({k: np.asarray(v, np.float32) for k, v in added.items()})
        weights = model_state(self.diffusion_model)
        latent = backend.shard_batch(latent)  # data parallel over devices when a distribution is set
        context = backend.shard_batch(ops.convert_to_tensor(context))
        unconditional_context = backend.shard_batch(ops.convert_to_tensor(unconditional_context))
        extra = {k: backend.shard_batch(v) if v.ndim == 4 else v for k, v in extra.items()}
        state = sampler.initial_state(ops.convert_to_tensor(latent))
        guidance = np.float32(guidance_scale)
        args = (context, unconditional_context, noise, guidance)
        timing_key = (_sampler_key(sampler), mode, tuple(latent.shape))
        every = progress_interval(num_steps, self._seconds_per_step.get(timing_key))
        in_one_go = progress is not None and every >= num_steps - start_index  # fast: one report, at the end
        if progress is None or in_one_go or backend.supports_loop_callback(self._num_params):
            shapes = (latent, noise, extra)
            with_callback = progress is not None and not in_one_go
            if (in_one_go and backend.supports_loop_callback(self._num_params)
                    and not self._compiled(sampler, mode, False, shapes)
                    and self._compiled(sampler, mode, True, shapes)):
                # A generation fast enough to report once, whose shape so far ran only with reports (the first
                # run of a shape reports as it goes): its reporting program reports once, at the last step,
                # instead of a second program being compiled for the same work.
                with_callback, in_one_go, every = True, False, max(1, num_steps - start_index)
            program = self._program(sampler, mode, with_callback, shapes)
            self._start(program, progress, weights, latent, state, args, every, extra)
            traces, started = self.trace_count, time.perf_counter()
            self._progress_sink, self._reported = progress, start_index
            try:
                latent, state = program(weights, latent, state, *args, np.int32(start_index), np.int32(num_steps),
                                        np.int32(every), extra)
                latent = backend.to_numpy(latent)  # JAX runs asynchronously: wait, so no step report is dropped
                if in_one_go:
                    self._on_step(num_steps - 1)
            finally:
                self._progress_sink = None
        else:
            latent, traces, started = self._run_in_chunks(sampler, mode, weights, latent, state, args, extra,
                                                          start_index, every, progress, num_steps)
        if self.trace_count == traces and num_steps > start_index:  # not timed when it compiled
            self._seconds_per_step[timing_key] = (time.perf_counter() - started) / (num_steps - start_index)
        return latent

    def _run_in_chunks(self, sampler, mode, weights, latent, state, args, extra, start_index, every, progress,
                       num_steps):
        """Progress without host calls inside the program (TensorFlow's XLA): the program runs ``every`` steps
        per call and each call reports its steps when it returns. Returns the latent and the trace count and
        time at the start of the steps."""
        program = self._program(sampler, mode, False, (latent, args[2], extra))
        weights = self._weights_in_compute_dtype(weights)  # cast once, not once per chunk
        self._start(program, progress, weights, latent, state, args, every, extra)
        traces, started = self.trace_count, time.perf_counter()
        for first in range(start_index, num_steps, every):
            last = min(first + every, num_steps)
            latent, state = program(weights, latent, state, *args, np.int32(first), np.int32(last), np.int32(every),
                                    extra)
            backend.wait(latent)
            for step in range(first + 1, last + 1):
                progress(step)
        return backend.to_numpy(latent), traces, started

    def _weights_in_compute_dtype(self, weights):
        dtype = _compute_dtype(self.diffusion_model)
        if dtype == "float32":
            return weights
        if self._cast is None:
            self._cast = backend.jit(lambda values: [_cast_floats(part, dtype) for part in values])
        return self._cast(weights)


class CompiledFunction:
    """A model's forward pass compiled once per input shape (one program each, held in ``programs``), weights
    passed as arguments."""

    def __init__(self, model, postprocess=None, programs=None):
        self.model = model
        self.trace_count = 0
        self.programs = programs if programs is not None else ProgramCache()
        self._postprocess = postprocess
        self._num_params = _num_params(model)

    def _build(self):
        model, postprocess = self.model, self._postprocess

        def forward(weights, inputs):
            self.trace_count += 1
            outputs, _ = model.stateless_call(weights[0], weights[1], inputs)
            return postprocess(outputs) if postprocess else outputs

        return backend.jit(forward, num_params=self._num_params)

    def __call__(self, inputs):
        if isinstance(inputs, dict):
            inputs = {key: backend.shard_batch(value) for key, value in inputs.items()}
        else:
            inputs = backend.shard_batch(inputs)  # data parallel when a distribution is set
        forward = self.programs.get((id(self), _shape_key(inputs)), self._build)
        return backend.to_numpy(forward(model_state(self.model), inputs))


def keras_dtype_policy(dtype):
    """Map a user dtype name to the Keras policy the text encoder / UNet are built with for generation.

    A half-precision dtype stores the weights in that dtype, as diffusers' ``torch_dtype`` and KerasHub's
    ``dtype`` do: the layers compute in it either way, and float32 master weights would double the memory (the
    SDXL UNet's 2.6 B parameters are 9.6 GiB in float32, 4.8 GiB in bfloat16). The scheduler maths stay float32
    and the VAE float32 (``models.COMPONENTS``' ``compute_dtype``). Training keeps float32 master weights with a
    mixed policy (``train.precision``)."""
    names = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
             "float16": "float16", "fp16": "float16"}
    if dtype not in names:
        raise ValueError(f"dtype must be one of {sorted(set(names))}, got {dtype!r}")
    return keras.DTypePolicy(names[dtype])
