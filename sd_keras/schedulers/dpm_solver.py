"""DPM-Solver++(2M) (Lu et al., 2022): a second-order multistep solver on the data prediction."""

import numpy as np

from sd_keras.schedulers.base import Sampler, karras_sigmas, leading_timesteps


class DPMPP2MSampler(Sampler):
    """The "DPM++ 2M" sampler (diffusers' DPMSolverMultistepScheduler with ``algorithm_type="dpmsolver++"``,
    ``solver_order=2``, ``solver_type="midpoint"``, ``final_sigmas_type="zero"``, ``lower_order_final=True``).

    The loop latent is the training-space noised latent ``α·x0 + s·noise`` with ``α = 1 / sqrt(σ² + 1)`` and
    ``s = σ·α`` (unit variance: ``init_noise_sigma`` is 1 and the model input is the latent itself). With
    ``λ = log(α / s)`` and ``h = λ' - λ``, a step from σ to σ' is

        first order:  x' = (s' / s)·x - α'(e^-h - 1)·D0
        second order: x' = (s' / s)·x - α'(e^-h - 1)·(D0 + (D0 - D_prev) / (2 r)),   r = h_prev / h

    where D0 is this step's denoised latent and D_prev the previous step's. The first step taken is first order
    (there is no previous one), and so is the last, whose σ' is 0 (it lands on D0). Both rules are in the tables
    except "first step taken", which the ``(previous_denoised, has_previous)`` state handles, so starting at a
    later index (image-to-image) also begins first order.

    Timestep spacing (default ``"linspace"``, as diffusers gives SD 1.x/2.x): ``num_steps + 1`` evenly spaced
    points from 999 to 0, rounded, the last dropped. ``"leading"``: ``k · (1000 // (num_steps + 1)) + 1``.
    ``karras=True`` ("DPM++ 2M Karras"): Karras et al.'s σ (ρ = 7) between the training σ_min and σ_max, each
    timestep the nearest integer training timestep with that σ.

    Example:
        >>> sampler = DPMPP2MSampler(20, karras=True)
        >>> sampler.timesteps[:3]
        array([999., 962., 921.], dtype=float32)
    """

    display_name = "DPM++ 2M"
    is_multistep = True

    def _noise_levels(self):
        schedule, count = self.schedule, self.num_steps
        train_steps = schedule.num_train_timesteps
        if self.karras:
            full = schedule.sigmas
            sigmas = karras_sigmas(full[0], full[-1], count)
            return schedule.timestep_at(sigmas).round(), sigmas
        if self.timestep_spacing == "linspace":
            timesteps = np.linspace(0, train_steps - 1, count + 1).round()[::-1][:-1]
        else:
            timesteps = leading_timesteps(schedule, count + 1, train_steps // (count + 1))[:-1]
        return timesteps, schedule.sigma_at(timesteps)

    def _build_tables(self):
        count = self.num_steps
        timesteps, sigmas = self._noise_levels()
        all_sigmas = np.concatenate([sigmas, [0.0]])
        alpha = 1.0 / np.sqrt(all_sigmas**2 + 1.0)
        scale = all_sigmas * alpha  # the noise's coefficient in the latent

        if self.prediction_type == "epsilon":
            denoise_latent, denoise_output = 1.0 / alpha[:-1], -sigmas
        else:  # v = α·noise - s·x0
            denoise_latent, denoise_output = alpha[:-1], -scale[:-1]

        # e^-h = σ'/σ because λ = -log σ; it is 0 on the last step, where h is infinite.
        decay = all_sigmas[1:] / all_sigmas[:-1]
        first_order = alpha[1:] * (1.0 - decay)  # -α'(e^-h - 1)
        step_denoised = first_order.copy()
        step_previous = np.zeros(count)
        if count > 2:
            inner = np.arange(1, count - 1)  # the steps with a previous step and a nonzero σ'
            log_sigma = np.log(all_sigmas[:-1])
            h = log_sigma[inner] - log_sigma[inner + 1]
            h_previous = log_sigma[inner - 1] - log_sigma[inner]
            # Repeated σ (too many steps) give h_previous = 0; the base class rejects the non-finite result.
            with np.errstate(divide="ignore", invalid="ignore"):
                correction = first_order[inner] * h / (2.0 * h_previous)  # α'(1 - e^-h) / (2r)
            step_denoised[inner] = first_order[inner] + correction
            step_previous[inner] = -correction
        return {
            "timesteps": timesteps,
            "sigmas": all_sigmas,
            "model_input_scale": np.ones(count),
            "denoise_latent": denoise_latent,
            "denoise_output": denoise_output,
            "step_latent": scale[1:] / scale[:-1],
            "step_denoised": step_denoised,
            "step_previous_denoised": step_previous,
            "step_noise": np.zeros(count),
            "signal_scale": alpha,
            "noise_scale": scale,
            "init_noise_sigma": np.float64(1.0),
        }
