"""What the generators conditioned on a prompt OR an image (``shape_ldm``, ``shap_e``, ``point_e``) check at submit
time: one rule, one wording, for every such pipeline."""

from __future__ import annotations

import numpy as np

from ..michelangelo.conditioner import check_images
from ..params import ParamError
from .base import PipelineInputs

IMAGE_INPUT = "image"
"""The input name of the concept image (an :class:`~.base.ImageInput` of each such pipeline)."""


def prompt_or_image(pipeline: str, prompt: str, inputs: PipelineInputs) -> np.ndarray | None:
    """Check that a pipeline conditioned on one kind of input got exactly one: a non-blank prompt or an image.

    Args:
        pipeline: the pipeline's name, for the messages.
        prompt: the config's prompt.
        inputs: the job's inputs; the image, if any, is ``inputs.images["image"]``.

    Returns:
        The image ((H, W, 3|4) uint8, row 0 = top) or None for a prompt.

    Raises:
        ParamError: neither a prompt nor an image, or both. ValueError: an image that is not (H, W, 3|4) uint8 with
            each side >= 16 px.
    """
    image = inputs.images.get(IMAGE_INPUT)
    if image is None and not prompt.strip():
        raise ParamError(f"{pipeline} needs a prompt or an image (input array '{IMAGE_INPUT}'); got an empty prompt "
                         f"and no image")
    if image is not None and prompt.strip():
        raise ParamError(f"{pipeline} takes a prompt or an image, not both (its model is conditioned on one kind)")
    if image is not None:
        check_images([image])
    return image
