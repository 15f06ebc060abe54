"""A1111's "Extras" endpoints: upscale images with the server's upscalers.

- ``GET /sdapi/v1/upscalers``: ``[{name, model_name, model_path, model_url, scale}]`` — ``None``, ``Lanczos``,
  ``Nearest`` and every ``.pth`` / ``.safetensors`` upscaler file of ``sd-keras serve --upscalers-dir`` (named
  by its file name without the extension);
- ``POST /sdapi/v1/extra-single-image``: ``image`` (base64) → ``{image, html_info}``;
- ``POST /sdapi/v1/extra-batch-images``: ``imageList: [{data, name}]`` → ``{images, html_info}``.

Request fields follow A1111's API: ``resize_mode`` 0 scales by ``upscaling_resize``, 1 scales to
``upscaling_resize_w`` x ``upscaling_resize_h`` (``upscaling_crop``: cover the box, then crop its centre);
``upscaler_1``, and optionally ``upscaler_2`` blended in with ``extras_upscaler_2_visibility``. An unknown upscaler
name is a 422 listing the available ones; face restoration (``gfpgan_visibility``, ``codeformer_visibility``) is
not available and is a 422 when asked for. Returned PNGs keep the input's text chunks and gain A1111's
``postprocessing`` chunk. Upscaling runs one request at a time, tile by tile (``sd_keras.upscale``).
"""

import base64
import io
import threading
from typing import List, Optional

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from sd_keras.errors import InputError
from sd_keras.server import images as image_io

MAX_OUTPUT_SIDE = 4096
MAX_BATCH_IMAGES = 16


class ExtrasRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    resize_mode: int = Field(0, ge=0, le=1, description="0: scale by upscaling_resize; 1: to upscaling_resize_w/h")
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0, ge=0, le=1)
    codeformer_visibility: float = Field(0, ge=0, le=1)
    codeformer_weight: float = Field(0, ge=0, le=1)
    upscaling_resize: float = Field(2, gt=0, le=8)
    upscaling_resize_w: int = Field(512, ge=1, le=MAX_OUTPUT_SIDE)
    upscaling_resize_h: int = Field(512, ge=1, le=MAX_OUTPUT_SIDE)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1)
    upscale_first: bool = False


class ExtraSingleImageRequest(ExtrasRequest):
    image: str = Field(..., description="base64 image (or data URL)")


class FileData(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data: str
    name: str = ""


class ExtraBatchImagesRequest(ExtrasRequest):
    imageList: List[FileData] = Field(..., max_length=MAX_BATCH_IMAGES)  # noqa: N815 - A1111's field name


class ExtraSingleImageResponse(BaseModel):
    html_info: str
    image: Optional[str] = None


class ExtraBatchImagesResponse(BaseModel):
    html_info: str
    images: List[str]


class UpscalerItem(BaseModel):
    name: str
    model_name: Optional[str] = None
    model_path: Optional[str] = None
    model_url: Optional[str] = None
    scale: Optional[float] = None


def _encode(image, texts):
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class _Extras:
    def __init__(self, upscalers):
        self.upscalers = upscalers
        self.lock = threading.Lock()  # one upscale at a time: memory stays bounded by one tile's activations

    def items(self):
        from sd_keras.upscale import NONE

        items = [{"name": NONE, "model_name": None, "model_path": None, "model_url": None, "scale": 4}]
        for name in self.upscalers.names():
            path = self.upscalers.path(name)
            items.append({"name": name, "model_name": name if path else None, "model_path": path,
                          "model_url": None, "scale": self.upscalers.scale(name) or 4})
        return items

    def _upscaler(self, name, field):
        from sd_keras.upscale import NONE

        if name == NONE:
            return NONE
        try:
            return self.upscalers.get(name)
        except InputError as error:
            raise InputError(f"{field}: {error}") from None

    def _one(self, image, body, field):
        import numpy as np
        from PIL import Image

        from sd_keras.upscale import NONE, postprocessing_info, upscale

        pixels = np.asarray(image.convert("RGB"))
        height, width = pixels.shape[:2]
        if body.resize_mode == 0:
            scale, box = body.upscaling_resize, None
        else:
            box = (body.upscaling_resize_w, body.upscaling_resize_h)
            scale = max(box[0] / width, box[1] / height)
            if not body.upscaling_crop:
                scale = min(box[0] / width, box[1] / height)
        if max(round(width * scale), round(height * scale)) > MAX_OUTPUT_SIDE:
            raise InputError(f"{field}: a {width}x{height} image scaled by {scale:g} is larger than "
                             f"{MAX_OUTPUT_SIDE} pixels on a side")
        first = self._upscaler(body.upscaler_1, "upscaler_1")
        second = self._upscaler(body.upscaler_2, "upscaler_2") if body.extras_upscaler_2_visibility > 0 else NONE
        if first == NONE:
            return pixels, None
        out = upscale(pixels, first, scale)
        if second != NONE:
            other = upscale(pixels, second, scale)
            out = np.asarray(Image.blend(Image.fromarray(out), Image.fromarray(other),
                                         body.extras_upscaler_2_visibility))
        if box is not None and body.upscaling_crop:
            top, left = (out.shape[0] - box[1]) // 2, (out.shape[1] - box[0]) // 2
            out = out[top:top + box[1], left:left + box[0]]
        info = postprocessing_info(body.upscaler_1, scale, box)
        if second != NONE:
            info += f", Postprocess upscaler 2: {body.upscaler_2}"
        return out, info

    def run(self, body, sources):
        """``sources``: [(base64 text, field)] → ([base64 PNG], info text)."""
        if body.gfpgan_visibility > 0 or body.codeformer_visibility > 0:
            raise InputError("gfpgan_visibility / codeformer_visibility: face restoration is not available here")
        # every image decoded (and checked) before any is upscaled
        decoded = [(image_io.decode_image(text, field), field) for text, field in sources]
        results, infos = [], []
        with self.lock:
            for image, field in decoded:
                texts = {k: v for k, v in image.info.items()
                         if isinstance(k, str) and isinstance(v, str) and k != "postprocessing"}
                out, info = self._one(image, body, field)
                if info:
                    texts["postprocessing"] = info
                    infos.append(info)
                results.append(_encode(out, texts))
        return results, infos[0] if infos else ""


def _unprocessable(error):
    return HTTPException(status_code=422, detail=" ".join(str(error).split()))


def create_router(upscalers):
    """The extras endpoints over ``upscalers`` (a ``sd_keras.upscale.Upscalers``)."""
    extras = _Extras(upscalers)
    router = APIRouter(tags=["extras"])

    @router.get("/sdapi/v1/upscalers", response_model=List[UpscalerItem])
    async def list_upscalers():
        return extras.items()

    @router.post("/sdapi/v1/extra-single-image", response_model=ExtraSingleImageResponse)
    async def extra_single_image(body: ExtraSingleImageRequest):
        try:
            images, info = await run_in_threadpool(extras.run, body, [(body.image, "image")])
        except (InputError, image_io.ImageInputError) as error:
            raise _unprocessable(error) from None
        return {"image": images[0], "html_info": info}

    @router.post("/sdapi/v1/extra-batch-images", response_model=ExtraBatchImagesResponse)
    async def extra_batch_images(body: ExtraBatchImagesRequest):
        sources = [(item.data, f"imageList.{index}.data") for index, item in enumerate(body.imageList)]
        try:
            images, info = await run_in_threadpool(extras.run, body, sources)
        except (InputError, image_io.ImageInputError) as error:
            raise _unprocessable(error) from None
        return {"images": images, "html_info": info}

    return router
