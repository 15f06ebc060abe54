"""The Stable Diffusion training noise schedule and the contract every sampler implements.

A sampler is an immutable object built for one step count. Everything that depends on the step index is
precomputed on the host into small float32 tables (``Sampler.tables()``), so the update itself is a fixed
elementwise formula with no branches on the index. The same tables drive the compiled XLA loop (where the index
is a traced integer), the bundle runner and the Kotlin port.

Every sampler reads the same tables with the same formulas (``n = num_steps``, ``i`` the step index):

    model_input = latent * model_input_scale[i]
    denoised    = denoise_latent[i] * latent + denoise_output[i] * model_output
    next_latent = step_latent[i] * latent + step_denoised[i] * denoised
                  + step_previous_denoised[i] * previous_denoised + step_noise[i] * noise
    add_noise   = signal_scale[i] * original + noise_scale[i] * noise              (i in 0..n; i == n is clean)

``previous_denoised`` is the denoised latent of the step taken before this one; on the first step taken (which
may be a later index for image-to-image) it is the current ``denoised``, which turns a two-step multistep update
into its first-order form. Samplers whose ``step_previous_denoised`` is all zero keep no state; samplers whose
``step_noise`` is all zero ignore ``noise``. The prediction type (epsilon or v) is folded into the ``denoise_*``
tables, so the formulas never change with it.

Building a sampler and reading its tables needs only numpy (the bundle runner uses them without Keras); the
per-step methods (``step``, ``denoise``, ``add_noise`` ...) import ``keras.ops`` on first use.
"""

import dataclasses
import math
import numbers
import types

import numpy as np

from sd_keras.errors import InputError


class _KerasOps:
    """``keras.ops``, imported on first attribute access so that the tables need no Keras."""

    def __getattr__(self, name):
        from keras import ops as keras_ops

        return getattr(keras_ops, name)


ops = _KerasOps()

PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "linspace")
KARRAS_RHO = 7.0  # the rho of Karras et al. (2022), Eq. 5; every SD UI uses it

# Tables every sampler provides; a port can run any sampler from these alone.
STEP_TABLES = ("timesteps", "sigmas", "model_input_scale", "denoise_latent", "denoise_output", "step_latent",
               "step_denoised", "step_previous_denoised", "step_noise", "signal_scale", "noise_scale",
               "init_noise_sigma")


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    """The discrete noise schedule a Stable Diffusion UNet was trained with.

    Defaults are SD 1.x/2.x's: 1000 steps of "scaled linear" betas from 0.00085 to 0.012 (betas are the squares
    of evenly spaced square roots), ``steps_offset=1`` as in their scheduler configs. ``alphas_cumprod`` is
    computed in float64 on the host. Use ``prediction_type="v_prediction"`` for v-models (SD 2.x 768-v).

    Example:
        >>> schedule = NoiseSchedule(prediction_type="v_prediction")
        >>> round(float(schedule.alphas_cumprod[0]), 5)
        0.99915
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: str = "epsilon"
    steps_offset: int = 1

    def __post_init__(self):
        if (isinstance(self.num_train_timesteps, bool) or not isinstance(self.num_train_timesteps, numbers.Integral)
                or self.num_train_timesteps < 2):
            raise InputError(f"num_train_timesteps must be an integer >= 2, got {self.num_train_timesteps!r}")
        for field in ("beta_start", "beta_end"):
            value = getattr(self, field)
            if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
                    or not 0.0 < value < 1.0):
                raise InputError(f"{field} must be a number in (0, 1), got {value!r}")
        if not self.beta_start <= self.beta_end:
            raise InputError(f"beta_start ({self.beta_start}) must not exceed beta_end ({self.beta_end})")
        if self.prediction_type not in PREDICTION_TYPES:
            raise InputError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if (isinstance(self.steps_offset, bool) or not isinstance(self.steps_offset, numbers.Integral)
                or not 0 <= self.steps_offset < self.num_train_timesteps):
            raise InputError(f"steps_offset must be an integer in [0, {self.num_train_timesteps}), "
                             f"got {self.steps_offset!r}")

    @property
    def betas(self):
        """float64 (num_train_timesteps,) per-step noise variances."""
        roots = np.linspace(math.sqrt(self.beta_start), math.sqrt(self.beta_end), self.num_train_timesteps,
                            dtype=np.float64)
        return roots**2

    @property
    def alphas_cumprod(self):
        """float64 (num_train_timesteps,): the signal variance ᾱ_t of the noised latent at each timestep."""
        return np.cumprod(1.0 - self.betas)

    @property
    def sigmas(self):
        """float64 (num_train_timesteps,): σ_t = sqrt((1 - ᾱ_t) / ᾱ_t), the noise level in "x0 + σ·noise" form."""
        alphas_cumprod = self.alphas_cumprod
        return np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)

    def sigma_at(self, timesteps):
        """σ at (possibly fractional) timesteps, interpolated linearly between training timesteps."""
        grid = np.arange(self.num_train_timesteps, dtype=np.float64)
        return np.interp(np.asarray(timesteps, np.float64), grid, self.sigmas)

    def timestep_at(self, sigmas):
        """The fractional timestep whose σ is ``sigmas``: linear interpolation in log σ, clamped to the range."""
        log_table = np.log(self.sigmas)  # increasing with t
        log_sigma = np.log(np.maximum(np.asarray(sigmas, np.float64), 1e-10))
        low = np.clip(np.searchsorted(log_table, log_sigma, side="right") - 1, 0, len(log_table) - 2)
        weight = np.clip((log_table[low] - log_sigma) / (log_table[low] - log_table[low + 1]), 0.0, 1.0)
        return low + weight


def karras_sigmas(sigma_min, sigma_max, num_steps, rho=KARRAS_RHO):
    """The Karras et al. (2022) noise levels: ``num_steps`` values from ``sigma_max`` down to ``sigma_min``,
    evenly spaced in σ^(1/rho), which spends more steps at low noise."""
    ramp = np.linspace(0.0, 1.0, num_steps, dtype=np.float64)
    top, bottom = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (top + ramp * (bottom - top)) ** rho


def leading_timesteps(schedule, count, ratio):
    """``count`` integer timesteps ``ratio`` apart from ``steps_offset`` upwards, highest first."""
    return (np.arange(count, dtype=np.float64) * ratio)[::-1] + schedule.steps_offset


def _is_int(value):
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


class Sampler:
    """Base class of the samplers: the tables and the step formulas shared by all of them.

    Subclasses compute the per-step tables of their algorithm in ``_build_tables`` (float64 numpy, cast to float32
    here). After construction a sampler is immutable; build another one for another step count.

    Args:
        num_steps: number of denoising steps (model evaluations), >= 1.
        schedule: the training ``NoiseSchedule`` (default: SD's, epsilon prediction).
        karras: use the Karras sigma schedule (not for DDIM).
        timestep_spacing: ``"leading"`` or ``"linspace"``; default per sampler (see its docstring).

    Example:
        >>> from sd_keras.schedulers import EulerSampler
        >>> sampler = EulerSampler(20)
        >>> sampler.timesteps.shape, sampler.sigmas.shape, float(sampler.sigmas[-1])
        ((20,), (21,), 0.0)
    """

    display_name = "?"
    default_timestep_spacing = "linspace"
    supports_karras = True
    needs_noise = False  # ancestral samplers take fresh unit Gaussian noise each step
    is_multistep = False  # multistep samplers carry the previous denoised latent

    def __init__(self, num_steps, *, schedule=None, karras=False, timestep_spacing=None):
        schedule = NoiseSchedule() if schedule is None else schedule
        if not isinstance(schedule, NoiseSchedule):
            raise InputError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if not isinstance(karras, (bool, np.bool_)):
            raise InputError(f"karras must be True or False, got {karras!r}")
        if karras and not self.supports_karras:
            raise InputError(f"karras: {self.display_name} has no Karras sigma schedule")
        spacing = self.default_timestep_spacing if timestep_spacing is None else timestep_spacing
        if spacing not in TIMESTEP_SPACINGS:
            raise InputError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}")
        # "leading" adds steps_offset, so its top timestep must stay inside the training range.
        max_steps = schedule.num_train_timesteps - (schedule.steps_offset if spacing == "leading" else 0)
        if not _is_int(num_steps) or not 1 <= num_steps <= max_steps:
            raise InputError(f"num_steps must be an integer in [1, {max_steps}] for {spacing!r} timestep spacing, "
                             f"got {num_steps!r}")
        object.__setattr__(self, "num_steps", int(num_steps))
        object.__setattr__(self, "schedule", schedule)
        object.__setattr__(self, "karras", bool(karras))
        object.__setattr__(self, "timestep_spacing", spacing)

        built = self._build_tables()
        tables = {}
        for key, value in built.items():
            dtype = np.int32 if np.asarray(value).dtype.kind in "iu" else np.float32
            array = np.array(value, dtype=dtype)
            if not np.all(np.isfinite(array)):
                raise InputError(f"num_steps={num_steps} gives a degenerate {self.display_name} schedule "
                                 f"(repeated noise levels); use fewer steps")
            array.flags.writeable = False
            tables[key] = array
        missing = [key for key in STEP_TABLES if key not in tables]
        if missing:
            raise TypeError(f"{type(self).__name__}._build_tables is missing {missing}")
        object.__setattr__(self, "_tables", types.MappingProxyType(tables))

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable; build a new sampler instead")

    def __repr__(self):
        return (f"{type(self).__name__}(num_steps={self.num_steps}, karras={self.karras}, "
                f"timestep_spacing={self.timestep_spacing!r}, prediction_type={self.prediction_type!r})")

    def _build_tables(self):
        raise NotImplementedError

    # -- host-side description -------------------------------------------------------------------------------
    @property
    def name(self):
        """The sampler's name as UIs show it, e.g. ``"DPM++ 2M Karras"``."""
        return self.display_name + (" Karras" if self.karras else "")

    @property
    def prediction_type(self):
        return self.schedule.prediction_type

    @property
    def timesteps(self):
        """float32 (num_steps,): the model timestep of each step, in the order steps are taken.

        Integer-valued except for samplers whose schedule lands between training timesteps (Euler with
        ``"linspace"`` spacing or Karras sigmas), which feed the fractional value to the model as diffusers does.
        """
        return self._tables["timesteps"]

    @property
    def sigmas(self):
        """float32 (num_steps + 1,): noise level σ of each step's input in "x0 + σ·noise" form; the last is 0."""
        return self._tables["sigmas"]

    @property
    def init_noise_sigma(self):
        """What the initial unit Gaussian latent is multiplied by."""
        return float(self._tables["init_noise_sigma"])

    def tables(self):
        """Every per-step number ``scale_model_input``, ``step`` and ``add_noise`` read, as a dict of fresh
        float32/int32 numpy arrays (see the module docstring for the formulas); ready to write as JSON.

        Example:
            >>> tables = get_sampler("DPM++ 2M", 20).tables()            # doctest: +SKIP
            >>> json.dumps({k: v.tolist() for k, v in tables.items()})   # doctest: +SKIP
        """
        return {key: value.copy() for key, value in self._tables.items()}

    # -- the per-step maths (keras.ops, float32; ``i`` may be a traced scalar integer) ----------------------
    def _at(self, name, i, last):
        table = self._tables[name]
        if _is_int(i):
            if not 0 <= i <= last:
                raise InputError(f"step index must be in [0, {last}], got {i}")
            return ops.convert_to_tensor(table[int(i)])
        return ops.take(ops.convert_to_tensor(table), ops.cast(i, "int32"))

    def scale_model_input(self, latent, i):
        """The UNet's input for step ``i``: the latent scaled to unit variance where the sampler needs it."""
        return ops.cast(latent, "float32") * self._at("model_input_scale", i, self.num_steps - 1)

    def denoise(self, latent, model_output, i):
        """The model's estimate of the clean latent at step ``i`` (useful for previews)."""
        last = self.num_steps - 1
        latent = ops.cast(latent, "float32")
        model_output = ops.cast(model_output, "float32")
        return self._at("denoise_latent", i, last) * latent + self._at("denoise_output", i, last) * model_output

    def initial_state(self, latent):
        """The loop carry before the first step taken: a float32 scalar zero, or for multistep samplers a
        ``(previous_denoised, has_previous)`` pair of zeros (fixed shapes, usable as a ``fori_loop`` carry)."""
        if self.is_multistep:
            return ops.zeros_like(ops.cast(latent, "float32")), ops.zeros((), "float32")
        return ops.zeros((), "float32")

    def step(self, latent, model_output, i, state, noise=None):
        """One denoising step: the latent of step ``i + 1`` from the latent and model output of step ``i``.

        Args:
            latent: the loop latent at step ``i`` (any float dtype; the maths is float32).
            model_output: the UNet's (guided) prediction for ``scale_model_input(latent, i)``.
            i: the step index, a Python int or a traced scalar integer tensor.
            state: the carry from ``initial_state`` or the previous ``step``.
            noise: unit Gaussian noise of the latent's shape; required when ``needs_noise``, else ignored.

        Returns:
            ``(next_latent, next_state)``, float32.

        Example:
            >>> sampler = get_sampler("Euler a", 20)                                   # doctest: +SKIP
            >>> latent = initial_noise * sampler.init_noise_sigma                      # doctest: +SKIP
            >>> state = sampler.initial_state(latent)                                  # doctest: +SKIP
            >>> for i in range(sampler.num_steps):                                     # doctest: +SKIP
            ...     output = unet(sampler.scale_model_input(latent, i), sampler.timesteps[i])
            ...     latent, state = sampler.step(latent, output, i, state, noise[i])
        """
        if self.needs_noise and noise is None:
            raise InputError(f"noise: {self.name} adds fresh noise every step; pass unit Gaussian noise")
        last = self.num_steps - 1
        latent = ops.cast(latent, "float32")
        denoised = self.denoise(latent, model_output, i)
        next_latent = self._at("step_latent", i, last) * latent + self._at("step_denoised", i, last) * denoised
        next_state = state
        if self.is_multistep:
            previous, has_previous = state
            previous = ops.where(has_previous > 0.5, previous, denoised)
            next_latent = next_latent + self._at("step_previous_denoised", i, last) * previous
            next_state = (denoised, ops.ones((), "float32"))
        if self.needs_noise:
            next_latent = next_latent + self._at("step_noise", i, last) * ops.cast(noise, "float32")
        return next_latent, next_state

    # -- image-to-image and inpainting -----------------------------------------------------------------------
    def start_index(self, strength):
        """The step to start from when re-noising an image with ``strength`` in [0, 1] (diffusers' img2img rule:
        ``num_steps - min(int(num_steps * strength), num_steps)``). 1 starts from pure noise (index 0); 0 gives
        ``num_steps``, i.e. no step runs and the image comes back unchanged.

        Example:
            >>> get_sampler("DDIM", 50).start_index(0.75)   # doctest: +SKIP
            13
        """
        if (isinstance(strength, (bool, np.bool_)) or not isinstance(strength, (numbers.Real, np.floating))
                or not math.isfinite(strength) or not 0.0 <= strength <= 1.0):
            raise InputError(f"strength must be a number in [0, 1], got {strength!r}")
        return self.num_steps - min(int(self.num_steps * strength), self.num_steps)

    def add_noise(self, original, noise, i):
        """``original`` (a clean latent) noised to the level of step ``i``'s input, in the space this sampler's
        loop latent lives in; ``i == num_steps`` returns ``original``. ``i`` may be a traced scalar integer.

        Image-to-image starts the loop at ``i = start_index(strength)`` from ``add_noise(original, noise, i)``;
        inpainting with a plain UNet re-blends the known region from ``add_noise(original, noise, i + 1)`` after
        step ``i``.
        """
        last = self.num_steps
        original = ops.cast(original, "float32")
        noise = ops.cast(noise, "float32")
        return self._at("signal_scale", i, last) * original + self._at("noise_scale", i, last) * noise
