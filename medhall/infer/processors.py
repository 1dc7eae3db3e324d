"""Loading a VLM's processor, with an image-only variant for machines without torchvision.

Qwen2-VL, Qwen2.5-VL and InternVL processors take a video processor, and in transformers 5
every video processor needs torchvision; without it ``AutoProcessor.from_pretrained`` fails
("Can't load video processor"). Their image processors have a PIL backend
(``Qwen2VLImageProcessorPil``, ``GotOcr2ImageProcessorPil``) that transformers picks on its own
when torchvision is absent. :func:`image_only_processor_class` derives a subclass of the stock
processor that has no video processor part: it loads the image processor, tokenizer, chat
template and settings from the same files and handles images exactly like the stock class;
only video input is unavailable. The subclass keeps the stock class name, so what it
saves (``processor_config.json``) names the stock class and loads anywhere.

torch and transformers are imported inside the functions.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

VIDEO_ARGUMENT = "video_processor"


def torchvision_available() -> bool:
    """Whether torchvision can be imported (transformers' own check)."""
    from transformers.utils import is_torchvision_available

    return bool(is_torchvision_available())


@cache
def image_only_processor_class(base: type) -> type:
    """A subclass of the processor class ``base`` that has no video processor.

    transformers finds the parts a processor loads, checks and saves through the classmethod
    ``get_attributes`` (by default the modality-named parameters of ``__init__``). The
    subclass leaves out ``video_processor`` there and keeps ``base.__init__`` unchanged, so
    ``from_pretrained`` loads only the image processor and tokenizer, every other saved setting
    (chat template, ``image_seq_length``, ...) reaches the constructor as before, and the
    constructor's ``video_processor`` stays ``None``. Classes without a video processor are
    returned unchanged.
    """
    attributes = [a for a in base.get_attributes() if a != VIDEO_ARGUMENT]
    if len(attributes) == len(base.get_attributes()):
        return base

    def get_attributes(cls: type) -> list[str]:
        return list(attributes)

    namespace = {
        "get_attributes": classmethod(get_attributes),
        "__module__": __name__,
        "__doc__": f"{base.__name__} for images only (no video processor, no torchvision).",
    }
    return type(base.__name__, (base,), namespace)


def processor_class_for(model_path: str | Path) -> type | None:
    """The stock processor class transformers maps the checkpoint's ``model_type`` to, if any."""
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    model_type = AutoConfig.from_pretrained(str(model_path)).model_type
    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    return getattr(transformers, name, None) if isinstance(name, str) else None


def load_processor(model_path: str | Path, *, image_only: bool | None = None) -> Any:
    """The checkpoint's processor: the stock one, or its image-only variant without torchvision.

    ``image_only=None`` (the default) takes the image-only variant exactly when torchvision is
    missing and the processor needs a video processor; ``True`` forces it.
    """
    from transformers import AutoProcessor

    if image_only is None:
        image_only = not torchvision_available()
    if image_only:
        stock = processor_class_for(model_path)
        if stock is not None and VIDEO_ARGUMENT in stock.get_attributes():
            return image_only_processor_class(stock).from_pretrained(str(model_path))
    return AutoProcessor.from_pretrained(str(model_path))


__all__ = [
    "image_only_processor_class",
    "load_processor",
    "processor_class_for",
    "torchvision_available",
]
