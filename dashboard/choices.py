"""What the sidebar's model and data pickers offer, and how each choice reads.

Registered models (each followed by its random-weights variant where there is one), the registered
data sets that fit a model's modality (the text model reads text, every other model images), and
the labels pickers and captions show for a model or data-set spec: torchvision and random weights
said, user files and uploads by name. Lookups in the engine's registries, no session state
(:mod:`dashboard.sources` draws the pickers and loads what they name).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ptq_core.data import available_datasets
from ptq_core.data.text import KIND as TEXT_FILE
from ptq_core.data.text import SENTENCES
from ptq_core.errors import PTQError
from ptq_core.models import MINILM, available_models, get_model_entry

from . import labels, state, uploads

IMAGE_FOLDER = "image_folder"  # a registered data-set kind that needs a path: offered as its own source
PATH_KINDS = (IMAGE_FOLDER, TEXT_FILE)  # every registered kind that needs a path (a source of its own)
# The registry does not say what a data set holds without loading it; these are the text ones the dashboard
# offers (ptq_core.data.text). Every other registered data set is image (or tensor) data.
TEXT_DATASETS = (SENTENCES,)


def random_variant(name: str) -> dict[str, Any] | None:
    """The random-weights spec of a registered model (offered next to it: no download needed), or None."""
    if name.startswith("torchvision:"):
        return {"kind": "torchvision", "name": name.split(":", 1)[1], "weights": "random"}
    if name in ("efficientnet_lite0", MINILM):
        return {"kind": name, "weights": "random"}
    return None


def model_options() -> list[str]:
    """Registered models, each followed by its random-weights variant where it has one (as spec strings)."""
    options = []
    for name in available_models():
        options.append(name)
        variant = random_variant(name)
        if variant is not None:
            options.append(labels.spec(variant))
    return options


def model_label(value: str) -> str:
    """How a model spec string reads in pickers: torchvision and random weights said, files by name."""
    spec = state.spec_value(value)
    if isinstance(spec, str):
        try:
            entry = get_model_entry(spec)
        except PTQError:
            return spec
        if spec.startswith("torchvision:"):
            name = spec.split(":", 1)[1]
            return f"{name} (torchvision, {'ImageNet' if entry.pretrained else 'random'} weights)"
        if entry.modality == "text":
            return f"{spec} (text: sentence embeddings{'' if entry.pretrained else ', random weights'})"
        return spec + ("" if entry.pretrained else " (random weights)")
    kind = spec.get("kind")
    if kind == "torchvision":
        weights = spec.get("weights", "DEFAULT")
        return f"{spec.get('name')} (torchvision, {'random weights' if weights == 'random' else f'{weights} weights'})"
    if kind == "efficientnet_lite0":
        return f"efficientnet_lite0 ({'random weights' if spec.get('weights') == 'random' else 'ImageNet weights'})"
    if kind == MINILM:
        return f"{MINILM} (text: sentence embeddings{', random weights' if spec.get('weights') == 'random' else ''})"
    if kind == "file" and isinstance(spec.get("path"), str):
        where = "uploaded to this server" if uploads.is_upload(spec["path"]) else "file"
        return f"your model {Path(spec['path']).name} ({where})"
    return value


def data_label(value: str) -> str:
    spec = state.spec_value(value)
    if isinstance(spec, str):
        return spec
    if spec.get("kind") == IMAGE_FOLDER and isinstance(spec.get("path"), str):
        where = "uploaded zip on this server" if uploads.is_upload(spec["path"]) else "on the server"
        return f"image folder {Path(spec['path']).name} ({where})"
    if spec.get("kind") == TEXT_FILE and isinstance(spec.get("path"), str):
        where = "uploaded to this server" if uploads.is_upload(spec["path"]) else "on the server"
        return f"text file {Path(spec['path']).name} ({where})"
    return value


@functools.lru_cache(maxsize=64)
def model_modality(value: str) -> str:
    """What a model spec string reads: "text" (the text model) or "image" (every other, a user's file included).

    A user's file is an image (or tensor) classifier and is not read here; a spec the engine refuses
    counts as image (loading it says what is wrong). Cached: entries are fixed per spec.
    """
    spec = state.spec_value(value)
    if isinstance(spec, dict) and spec.get("kind") == "file":
        return "image"
    try:
        return get_model_entry(spec).modality
    except PTQError:
        return "image"


def data_options(modality: str) -> list[str]:
    """The registered data sets offered for a model of ``modality`` (those needing a path have their own source)."""
    names = [d for d in available_datasets() if d not in PATH_KINDS]
    return [d for d in names if (d in TEXT_DATASETS) == (modality == "text")]
