"""Euler ancestral ("Euler a"): Euler steps that overshoot below the next noise level and add fresh noise back."""

import numpy as np

from sd_keras.schedulers.euler import EulerSampler


class EulerAncestralSampler(EulerSampler):
    """The "Euler a" sampler (diffusers' EulerAncestralDiscreteScheduler, k-diffusion's ``sample_euler_ancestral``
    with η = 1).

    Same noise levels, latent space and model input scaling as ``EulerSampler``. Going from σ to σ', each step
    splits σ' into a deterministic part ``σ_down`` and a random part ``σ_up``
    (``σ_up = sqrt(σ'² (σ² - σ'²) / σ²)``, ``σ_down = sqrt(σ'² - σ_up²)``), takes an Euler step to ``σ_down``
    and adds ``σ_up · noise``. ``needs_noise`` is True: pass a fresh unit Gaussian ``noise`` to every ``step``
    (drawn on the host, so a seed gives the same image everywhere).

    ``karras=True`` applies the Karras noise levels as for Euler ("Euler a Karras"; diffusers' class has no such
    option, the update is unchanged).

    Example:
        >>> sampler = EulerAncestralSampler(20)
        >>> sampler.needs_noise, float(sampler.tables()["step_noise"][-1])
        (True, 0.0)
    """

    display_name = "Euler a"
    needs_noise = True

    def _build_tables(self):
        tables = self._common_tables()
        sigmas = tables["sigmas"]
        sigma, sigma_next = sigmas[:-1], sigmas[1:]
        sigma_up = np.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
        sigma_down = np.sqrt(np.maximum(sigma_next**2 - sigma_up**2, 0.0))
        ratio = sigma_down / sigma
        tables["step_latent"] = ratio
        tables["step_denoised"] = 1.0 - ratio
        tables["step_noise"] = sigma_up
        return tables
