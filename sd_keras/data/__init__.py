"""Training data: the synthetic captioned shapes (``shapes.py``) and folders of captioned images (``folder.py``).

Example:
    >>> from sd_keras.data import ShapesDataset
    >>> ShapesDataset(seed=0)[0].caption  # doctest: +SKIP
    'a large purple square in the bottom right on a white background'
"""

from sd_keras.data.folder import ImageFolderDataset
from sd_keras.data.shapes import (BACKGROUND_COLORS, DEFAULT_BACKGROUND, OBJECT_COLORS, PALETTE, POSITIONS, SHAPES,
                                  SIZES, Placement, Sample, Scene, ShapeSpec, ShapesDataset, is_heldout, render,
                                  render_dataset)

__all__ = ["ShapesDataset", "ImageFolderDataset", "Scene", "ShapeSpec", "Placement", "Sample", "render",
           "render_dataset", "is_heldout",
           "PALETTE", "OBJECT_COLORS", "BACKGROUND_COLORS", "DEFAULT_BACKGROUND", "SHAPES", "SIZES", "POSITIONS"]
