"""DDIM (Song et al., 2021) with η = 0: the deterministic sampler of KerasCV's Stable Diffusion."""

import numpy as np

from sd_keras.schedulers.base import Sampler, leading_timesteps


class DDIMSampler(Sampler):
    """Deterministic DDIM on a subset of the training timesteps.

    The loop latent is the training-space noised latent ``sqrt(ᾱ)·x0 + sqrt(1 - ᾱ)·noise`` (unit variance, so
    ``init_noise_sigma`` is 1 and the model input is the latent itself). Each step predicts x0 and moves to the
    next timestep taken; after the last step ᾱ is 1, so the result is the clean latent.

    Timestep spacing:
        ``"leading"`` (default): ``t = k · (1000 // num_steps) + 1`` -- what A1111 and diffusers' DDIMScheduler
        use for SD 1.x/2.x (``timestep_spacing="leading"``, ``steps_offset=1``); with ``set_alpha_to_one=True``
        this sampler equals diffusers' step for step. These are also the timesteps of KerasCV releases before
        0.9 (``np.arange(1, 1000, 1000 // num_steps)``) whenever ``num_steps`` divides 1000.
        ``"linspace"``: ``t = round(k · 999 / (num_steps - 1))``, i.e. 0 ... 999 -- KerasCV 0.9's
        ``generate_image`` (the "DDIM KerasCV" sampler). Each step moves to the ᾱ of the next timestep actually
        taken, as KerasCV does (diffusers' "linspace" DDIM steps to ``t - 1000 // num_steps`` instead).

    Tables beyond the common ones: ``alphas`` (ᾱ at each step's timestep) and ``alphas_prev`` (ᾱ after the step:
    the next step's, 1.0 after the last).

    Example:
        >>> sampler = DDIMSampler(50)
        >>> sampler.timesteps[:3]
        array([981., 961., 941.], dtype=float32)
    """

    display_name = "DDIM"
    default_timestep_spacing = "leading"
    supports_karras = False

    @property
    def name(self):
        return "DDIM KerasCV" if self.timestep_spacing == "linspace" else "DDIM"

    @property
    def alphas(self):
        """float32 (num_steps,): ᾱ at each step's timestep."""
        return self._tables["alphas"]

    @property
    def alphas_prev(self):
        """float32 (num_steps,): ᾱ the step moves to (the next step's ᾱ; 1.0 after the last step)."""
        return self._tables["alphas_prev"]

    def _timesteps(self):
        schedule, count = self.schedule, self.num_steps
        if self.timestep_spacing == "leading":
            return leading_timesteps(schedule, count, schedule.num_train_timesteps // count)
        # KerasCV 0.9's exact expression (not np.linspace) so half-way roundings agree with it.
        ratio = (schedule.num_train_timesteps - 1) / (count - 1) if count > 1 else schedule.num_train_timesteps
        return (np.arange(count) * ratio).round()[::-1].astype(np.float64)

    def _build_tables(self):
        timesteps = self._timesteps()
        alphas = self.schedule.alphas_cumprod[timesteps.astype(np.int64)]
        # ᾱ of each step's input, then 1.0: the clean latent the last step lands on.
        levels = np.concatenate([alphas, [1.0]])
        signal, noise = np.sqrt(levels), np.sqrt(1.0 - levels)
        alphas_prev = levels[1:]
        signal_next, noise_next = signal[1:], noise[1:]
        signal_now, noise_now = signal[:-1], noise[:-1]

        if self.prediction_type == "epsilon":
            denoise_latent, denoise_output = 1.0 / signal_now, -noise_now / signal_now
        else:  # v = sqrt(ᾱ)·noise - sqrt(1 - ᾱ)·x0
            denoise_latent, denoise_output = signal_now, -noise_now
        # x_next = sqrt(ᾱ')·x0 + sqrt(1 - ᾱ')·ε with ε = (x - sqrt(ᾱ)·x0) / sqrt(1 - ᾱ), written in x and x0.
        step_latent = noise_next / noise_now
        step_denoised = signal_next - step_latent * signal_now
        count = self.num_steps
        return {
            "timesteps": timesteps,
            "sigmas": noise / signal,
            "alphas": alphas,
            "alphas_prev": alphas_prev,
            "model_input_scale": np.ones(count),
            "denoise_latent": denoise_latent,
            "denoise_output": denoise_output,
            "step_latent": step_latent,
            "step_denoised": step_denoised,
            "step_previous_denoised": np.zeros(count),
            "step_noise": np.zeros(count),
            "signal_scale": signal,
            "noise_scale": noise,
            "init_noise_sigma": np.float64(1.0),
        }
