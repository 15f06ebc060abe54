"""The training set (rendered shapes or an image folder, tokenized once) and the batch order of each step."""

import os

import numpy as np

from sd_keras.errors import InputError


def _shapes_data(section, image_size):
    """Render ``num_samples`` training images (in parallel processes) and their captions."""
    from sd_keras.data.shapes import render_dataset

    return render_dataset(section.num_samples, workers=section.workers or os.cpu_count() or 1, seed=section.seed,
                          image_size=image_size, split="train", two_object_fraction=section.two_object_fraction,
                          holdout_fraction=section.holdout_fraction, background_fraction=section.background_fraction)


def training_data(config, model_config):
    """uint8 images (N, H, W, 3), token ids (N, 77) and captions of the training set."""
    from sd_keras.tokenizer import CLIPTokenizer

    size = model_config.image_size[0]
    if model_config.image_size[0] != model_config.image_size[1]:
        raise InputError(f"model.image_size: training uses square images, got {model_config.image_size}")
    if config.data.source == "shapes":
        images, captions = _shapes_data(config.data, size)
    else:
        from sd_keras.data.folder import ImageFolderDataset

        dataset = ImageFolderDataset(config.data.folder, size)
        images, captions = dataset.images, dataset.captions
    tokenizer = CLIPTokenizer()
    unique = sorted(set(captions))
    table = dict(zip(unique, tokenizer.tokenize(unique, pad_token_id=model_config.pad_token_id)))
    tokens = np.stack([table[caption] for caption in captions]).astype(np.int32)
    empty = tokenizer.tokenize([""], pad_token_id=model_config.pad_token_id)[0].astype(np.int32)
    return images, tokens, captions, empty


def batch_indices(seed, stage_index, step, batch_size, total):
    return np.random.default_rng([seed, stage_index, step]).integers(0, total, size=batch_size)

