"""A folder of your own captioned images, for fine-tuning (``data.source: folder`` in a training config).

Layout: every image (``.png``, ``.jpg``, ``.jpeg``, ``.webp``, ``.bmp``) has its caption in a text file of the same
name beside it (``cat_01.png`` + ``cat_01.txt``); sub-folders are searched too. Images are centre-cropped to a
square and resized (Lanczos) to ``image_size``, and all of them are held in memory (a few hundred images of
128x128 take a few MB).

Example:
    >>> dataset = ImageFolderDataset("my_images", image_size=128)   # doctest: +SKIP
    >>> images, captions = dataset.batch([0, 1])                     # doctest: +SKIP
"""

import os

import numpy as np

from sd_keras.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImageFolderDataset:
    """Images and captions of a folder, indexed ``0 .. len - 1`` in sorted path order.

    Raises:
        InputError: the folder does not exist, holds no images, an image has no caption file (all of them are
            named), a caption is empty, or an image cannot be read.
    """

    def __init__(self, folder, image_size=128):
        from PIL import Image, UnidentifiedImageError

        if not folder or not os.path.isdir(folder):
            raise InputError(f"data.folder: {folder!r} is not a folder")
        paths = []
        for root, _, names in os.walk(folder):
            paths += [os.path.join(root, name) for name in names if name.lower().endswith(IMAGE_EXTENSIONS)]
        paths.sort()
        if not paths:
            raise InputError(f"data.folder: no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder!r}")
        missing = [p for p in paths if not os.path.exists(os.path.splitext(p)[0] + ".txt")]
        if missing:
            shown = ", ".join(os.path.relpath(p, folder) for p in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise InputError(f"data.folder: {len(missing)} image(s) have no caption file (same name, .txt): "
                             f"{shown}{more}")
        self.folder, self.image_size, self.paths = folder, int(image_size), paths
        self.captions, images = [], []
        for path in paths:
            with open(os.path.splitext(path)[0] + ".txt", encoding="utf-8") as handle:
                caption = " ".join(handle.read().split())
            if not caption:
                raise InputError(f"data.folder: the caption of {os.path.relpath(path, folder)} is empty")
            try:
                with Image.open(path) as opened:
                    image = opened.convert("RGB")
            except (OSError, UnidentifiedImageError) as error:
                raise InputError(f"data.folder: cannot read {path} ({error})") from None
            self.captions.append(caption)
            images.append(_square(image, self.image_size))
        self.images = np.stack(images)

    def __len__(self):
        return len(self.paths)

    def batch(self, indices):
        """uint8 images (B, H, W, 3) and the captions of ``indices`` (taken modulo the dataset length)."""
        indices = np.asarray(indices, np.int64) % len(self)
        return self.images[indices], [self.captions[i] for i in indices]


def _square(image, size):
    from PIL import Image

    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
    return np.asarray(image, np.uint8)
