"""Euler: the first-order ODE sampler of Karras et al. (2022) on SD's discrete noise levels."""

import numpy as np

from sd_keras.schedulers.base import Sampler, karras_sigmas, leading_timesteps


class EulerSampler(Sampler):
    """The "Euler" sampler (diffusers' EulerDiscreteScheduler).

    The loop latent lives in "x0 + σ·noise" form: the initial noise is scaled by ``init_noise_sigma`` and the
    model sees ``latent / sqrt(σ² + 1)``. Each step moves along the probability-flow ODE direction
    ``(latent - denoised) / σ`` from σ to the next σ; the last σ is 0, so the last step lands on the denoised
    latent.

    Timestep spacing (default ``"linspace"``, what diffusers gives SD 1.x/2.x pipelines, whose scheduler configs
    predate ``timestep_spacing``): ``num_steps`` evenly spaced fractional timesteps from 999 to 0, σ interpolated
    linearly between training timesteps; ``init_noise_sigma`` is σ_max. ``"leading"`` (SDXL-style configs):
    ``k · (1000 // num_steps) + 1`` and ``init_noise_sigma = sqrt(σ_max² + 1)``.

    With ``karras=True`` the noise levels are Karras et al.'s (ρ = 7) between the spacing's highest and lowest σ,
    and each timestep is the fractional training timestep with that σ (log-σ interpolation).

    Example:
        >>> sampler = EulerSampler(20, karras=True)
        >>> round(sampler.init_noise_sigma, 3)
        14.615
    """

    display_name = "Euler"

    def _noise_levels(self):
        """(timesteps, sigmas without the final 0), float64."""
        schedule, count = self.schedule, self.num_steps
        if self.timestep_spacing == "linspace":
            # float32 like the timesteps the model is fed, so each σ matches the timestep actually used
            timesteps = np.linspace(0, schedule.num_train_timesteps - 1, count, dtype=np.float32)[::-1]
            timesteps = timesteps.astype(np.float64)
        else:
            timesteps = leading_timesteps(schedule, count, schedule.num_train_timesteps // count)
        sigmas = schedule.sigma_at(timesteps)
        if self.karras:
            sigmas = karras_sigmas(sigmas[-1], sigmas[0], count)
            timesteps = schedule.timestep_at(sigmas)
        return timesteps, sigmas

    def _common_tables(self):
        timesteps, sigmas = self._noise_levels()
        sigma_max = sigmas.max()
        init_noise_sigma = sigma_max if self.timestep_spacing == "linspace" else np.sqrt(sigma_max**2 + 1.0)
        if self.prediction_type == "epsilon":
            denoise_latent, denoise_output = np.ones_like(sigmas), -sigmas
        else:  # the v-model's denoiser: c_skip = 1 / (σ² + 1), c_out = -σ / sqrt(σ² + 1)
            denoise_latent, denoise_output = 1.0 / (sigmas**2 + 1.0), -sigmas / np.sqrt(sigmas**2 + 1.0)
        all_sigmas = np.concatenate([sigmas, [0.0]])
        return {
            "timesteps": timesteps,
            "sigmas": all_sigmas,
            "model_input_scale": 1.0 / np.sqrt(sigmas**2 + 1.0),
            "denoise_latent": denoise_latent,
            "denoise_output": denoise_output,
            "step_previous_denoised": np.zeros(self.num_steps),
            "step_noise": np.zeros(self.num_steps),
            "signal_scale": np.ones(self.num_steps + 1),
            "noise_scale": all_sigmas,
            "init_noise_sigma": np.float64(init_noise_sigma),
        }

    def _build_tables(self):
        tables = self._common_tables()
        sigmas = tables["sigmas"]
        # latent + (latent - denoised) / σ · (σ' - σ), written in latent and denoised
        ratio = sigmas[1:] / sigmas[:-1]
        tables["step_latent"] = ratio
        tables["step_denoised"] = 1.0 - ratio
        return tables
