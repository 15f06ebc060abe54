"""The generation defaults of each front end, in one place.

- The Python API (``StableDiffusion.text_to_image`` and friends) keeps KerasCV's defaults: 50 steps, guidance
  7.5, its DDIM sampler (``sd_keras.pipeline``). They are not repeated here.
- ``sd-keras generate`` (``CLI``) uses AUTOMATIC1111's web UI defaults, the ones its ``parameters`` text is
  usually read beside: 20 steps, CFG scale 7, ``Euler a``; seed 42 unless ``-s -1``; strength 0.75; prompts in
  A1111's syntax (``--prompt-syntax a1111``).
- ``sd-keras serve`` (``SERVER``) answers as AUTOMATIC1111's HTTP API does for fields a request leaves out:
  50 steps, CFG scale 7, ``Euler`` (its ``sampler_index`` default), a random seed (-1), denoising strength 0.75;
  prompts in A1111's syntax.

Both front ends load ``MODEL`` (the shipped demo model: works offline) when no model is named.

A foundation module (imports nothing), so the CLI, the server and their tests read the same numbers.

Example:
    >>> CLI.steps, CLI.cfg_scale, CLI.sampler
    (20, 7.0, 'Euler a')
    >>> SERVER.steps, SERVER.sampler, SERVER.seed
    (50, 'Euler', -1)
"""

import dataclasses

MODEL = "shapes"


@dataclasses.dataclass(frozen=True)
class GenerationDefaults:
    """What a front end uses for a setting its caller leaves out."""

    steps: int
    cfg_scale: float
    sampler: str
    seed: int          # -1: a random seed (reported with the images)
    strength: float    # image-to-image and inpainting
    prompt_syntax: str = "a1111"  # "a1111": (word:1.2), BREAK, <lora:...>, long prompts; "plain": text as written


CLI = GenerationDefaults(steps=20, cfg_scale=7.0, sampler="Euler a", seed=42, strength=0.75)
SERVER = GenerationDefaults(steps=50, cfg_scale=7.0, sampler="Euler", seed=-1, strength=0.75)
