"""The last step of a run: the trained model (LoRA merged) as a saved folder, the adapters, the evaluation."""

import os
import sys

from sd_keras import files
from sd_keras.train.lora import dense_layers, merged_tensors, save_lora


def finish(config, parts, model_config, out_dir):
    """Export the trained model (merged LoRA), the LoRA adapters and, for shapes data, the evaluation."""
    from sd_keras import models
    from sd_keras.pipeline import StableDiffusion
    from sd_keras.weights.saved import save_pretrained

    result = {}
    fresh = {name: models.build(name, model_config, weights=merged_tensors(model), source=f"trained {name}")
             for name, model in parts.items()}
    sd = StableDiffusion(model_config, **fresh)
    folder = os.path.join(out_dir, "model")
    weight_dtype = None if config.export.weight_dtype == "float32" else config.export.weight_dtype
    save_pretrained(sd, folder, weight_dtype=weight_dtype)
    result["model"] = folder
    if any(layer.lora_enabled for layer in dense_layers(parts.diffusion_model)):
        result["lora"] = save_lora(parts.diffusion_model, os.path.join(out_dir, "lora.safetensors"),
                                   model_config.name)
    if config.eval.enabled and config.data.source == "shapes" and (config.eval.num_single or config.eval.num_double):
        from sd_keras import evaluate

        if weight_dtype:  # evaluate what ships: the stored (rounded) weights
            sd = StableDiffusion.from_checkpoint(folder)
        scenes = evaluate.heldout_scenes(config.eval.num_single, config.eval.num_double, seed=config.eval.seed,
                                         holdout_fraction=config.data.holdout_fraction)
        report = evaluate.evaluate(sd, scenes, num_steps=config.eval.num_steps, sampler=config.eval.sampler,
                                   guidance_scale=config.eval.guidance_scale, seed=config.eval.seed,
                                   batch_size=config.eval.batch_size, out_dir=os.path.join(out_dir, "eval"))
        compact = {k: v for k, v in report.items() if k != "records"}
        write_json(os.path.join(folder, "eval_summary.json"), compact)
        result["eval"] = report["summary"]
        print(evaluate.format_summary(report["summary"]), file=sys.stderr)
    return result


def write_json(path, data):
    files.write_json(path, data, indent=1)


def write_text(path, text):
    files.write_text(path, text)
