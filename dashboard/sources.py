"""The sidebar's "Model and data" section: where the model and the data set come from.

Model: a registered model (the digits models, EfficientNet-Lite0, torchvision classifiers, the
text model all-MiniLM-L6-v2, each also with random weights), or the user's own file, typed as a
path under the data roots or uploaded. Data: a registered data set, or, for an image model, an
image folder typed as a path or uploaded as a zip; for the text model, a .txt/.csv file typed as
a path or uploaded. The data pickers offer only what the chosen model reads (its modality), and
switch to the model's default data set when a model of the other modality is chosen. What the
pickers offer and how each choice reads is :mod:`dashboard.choices`.

The pickers (keys ``src_*``) are a pending choice; what the config uses is ``sb_model`` and
``sb_dataset``. **Load** builds the pair FIRST (path checked, upload size-checked and stored,
file read and lifted, images listed, the model traced on one sample, all through the shared
Explorer cache) and only then sets them, clearing the layer names of the old model. Anything
wrong is a PTQError: its message is shown and the session stays exactly as it was. Model and
data are applied together because each constrains the other (an image model needs an image
folder; an image folder needs a model with image preprocessing; text needs the text model).

When ``sb_model``/``sb_dataset`` change elsewhere (an imported config, a restore), the pickers
are set to show them. Everything here is per session (``st.session_state``); only the
Explorer (``st.cache_resource``) and the content-addressed upload folder are shared.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st

from ptq_core.data.image_dataset import image_folder_spec
from ptq_core.data.text import KIND as TEXT_FILE
from ptq_core.errors import DataError, ModelError, PTQError
from ptq_core.models import available_models, get_model_entry
from ptq_core.models.files import DEFAULT_INPUT_SHAPE, FORMATS, check_model_file, detect_format
from ptq_core.models.preprocessing import INTERPOLATIONS
from ptq_core.paths import MAX_MODEL_MB_ENV, MAX_UPLOAD_MB_ENV, max_model_bytes, max_upload_bytes, upload_max_age_s
from ptq_core.pipeline import Explorer

from . import labels, resources, state, uploads
from .choices import PATH_KINDS, data_label, data_options, model_label, model_modality, model_options

MODEL_FROM = {"registered": "registered model", "path": "model file on the server", "upload": "upload a model file"}
DATA_FROM = {"registered": "registered data set", "path": "image folder on the server", "upload": "upload a zip of images"}
TEXT_DATA_FROM = {"registered": "registered data set", "path": "text file on the server",
                  "upload": "upload a text file (.txt or .csv)"}
NO_ARCHITECTURE = ""  # the architecture picker's "none" (only state dicts take one)
DEFAULT_PREPROCESSING = "default"  # the file spec leaves preprocessing out: the architecture's, else imagenet
CUSTOM_PREPROCESSING = "custom"  # the file spec states an object built from the fields below (empty = default)
# preprocessing field -> its picker (text; interpolation a choice, "" = default)
PREP_FIELDS = {"resize": "src_m_resize", "crop": "src_m_crop", "mean": "src_m_mean", "std": "src_m_std",
               "interpolation": "src_m_interp"}
FORMAT_LABELS = {"auto": "auto (from the file)", "torchscript": "TorchScript", "export": "torch.export (.pt2)",
                 "state_dict": "state dict"}
PICKERS = ("src_m_from", "src_m_name", "src_m_path", "src_m_format", "src_m_arch", "src_m_shape", "src_m_prep",
           *PREP_FIELDS.values(), "src_d_from", "src_d_name", "src_d_path", "src_d_num_cal", "src_d_seed", "src_d_max_images")
UPLOADERS = ("src_m_upload", "src_d_zip", "src_d_text")  # file pickers: a pending choice is their file id


# -- what the pickers offer for the picked model ---------------------------------------------------
def picked_modality() -> str:
    """What the model in the pickers (not yet loaded, perhaps) reads: the data pickers offer that kind of data."""
    ss = st.session_state
    return model_modality(ss["src_m_name"]) if ss["src_m_from"] == "registered" else "image"


def _options_with(current: str, options: list[str]) -> list[str]:
    return options if current in options else [*options, current]


def _preprocessing_options() -> list[str]:
    image_models = []
    for name in available_models():
        try:
            entry = get_model_entry(name)
            if entry.transform is not None and entry.modality == "image":  # the text model's tokenizer is no option
                image_models.append(name)
        except PTQError:
            continue
    return [DEFAULT_PREPROCESSING, CUSTOM_PREPROCESSING, "imagenet", "none", *image_models]


def _numbers_text(value: Any) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)


def _prep_pickers(prep: Any) -> dict[str, Any]:
    """Picker values showing a file spec's ``preprocessing`` (an object fills the custom fields)."""
    values: dict[str, Any] = {key: "" for key in PREP_FIELDS.values()}
    if isinstance(prep, dict):
        values["src_m_prep"] = CUSTOM_PREPROCESSING
        values.update({key: _numbers_text(prep[field]) for field, key in PREP_FIELDS.items() if field in prep})
    else:
        values["src_m_prep"] = prep or DEFAULT_PREPROCESSING
    return values


# -- pickers <-> the applied specs -----------------------------------------------------------------
def _pickers_for(model_value: str, data_value: str) -> dict[str, Any]:
    """Picker values that show the applied model and data set."""
    values: dict[str, Any] = {}
    model = state.spec_value(model_value)
    if isinstance(model, dict) and model.get("kind") == "file":
        shape = model.get("input_shape") or list(DEFAULT_INPUT_SHAPE)
        values.update({
            "src_m_from": "path", "src_m_path": str(model.get("path", "")), "src_m_format": model.get("format", "auto"),
            "src_m_arch": model.get("architecture") or NO_ARCHITECTURE,
            "src_m_shape": ", ".join(str(d) for d in shape), **_prep_pickers(model.get("preprocessing")),
        })
    else:
        values.update({"src_m_from": "registered", "src_m_name": model_value})
    return {**values, **_data_pickers(data_value), "src_d_modality": model_modality(model_value)}


def _data_pickers(data_value: str) -> dict[str, Any]:
    """Picker values that show a data set: a registered name, or a path (image folder or text file) and its split."""
    data = state.spec_value(data_value)
    if isinstance(data, dict) and data.get("kind") in PATH_KINDS and isinstance(data.get("path"), str):
        return {
            "src_d_from": "path", "src_d_path": data["path"], "src_d_num_cal": int(data.get("num_calibration") or 0),
            "src_d_seed": int(data.get("seed") or 0),
            "src_d_max_images": int(data.get("max_images") or data.get("max_lines") or 0),  # one picker, both kinds
        }
    return {"src_d_from": "registered", "src_d_name": data_value}


def _defaults() -> dict[str, Any]:
    return {"src_m_from": "registered", "src_m_name": "digits_cnn", "src_m_path": "", "src_m_format": "auto",
            "src_m_arch": NO_ARCHITECTURE, "src_m_shape": ", ".join(str(d) for d in DEFAULT_INPUT_SHAPE),
            "src_m_prep": DEFAULT_PREPROCESSING, **dict.fromkeys(PREP_FIELDS.values(), ""), "src_d_from": "registered", "src_d_name": "digits", "src_d_path": "",
            "src_d_num_cal": 0, "src_d_seed": 0, "src_d_max_images": 0, "src_d_modality": "image"}


def _snapshot() -> tuple[Any, ...]:
    """The pickers' values (uploads by file id), to tell a pending choice from the loaded one."""
    ss = st.session_state
    files = tuple(getattr(ss.get(k), "file_id", None) for k in UPLOADERS)
    return (*(ss.get(k) for k in PICKERS), *files)


def _sync_pickers() -> None:
    """Show the applied model and data set in the pickers when they changed outside this section."""
    ss = st.session_state
    applied = (ss["sb_model"], ss["sb_dataset"])
    if ss.get("src_synced") == applied:
        return
    for key, value in {**_defaults(), **_pickers_for(*applied)}.items():
        ss[key] = value
    ss["src_synced"] = applied
    ss["src_snapshot"] = None  # taken after the widgets are drawn (uploads included)
    ss.setdefault("src_error", None)


# -- building and checking the chosen pair ---------------------------------------------------------
def _input_shape(text: str) -> list[int]:
    try:
        shape = [int(part) for part in text.replace("x", ",").split(",") if part.strip()]
    except ValueError:
        shape = []
    if not 1 <= len(shape) <= 3 or any(d < 1 for d in shape):
        raise DataError(f"input shape: got {text!r}; allowed: 1 to 3 positive integers such as 3, 224, 224 "
                        "(one sample, no batch dimension)")
    return shape


def _numbers(text: str, field: str, *, integers: bool) -> list[float] | list[int]:
    parts = [part.strip() for part in (text.replace("x", ",") if integers else text).split(",")]
    try:
        return [int(p) for p in parts] if integers else [float(p) for p in parts]
    except ValueError:
        allowed = "an integer, or height, width (pixels)" if integers else "3 numbers, one per RGB channel, e.g. 0.5, 0.5, 0.5"
        raise ModelError(f"model.preprocessing.{field}: got {text!r}; allowed: {allowed}, or empty for the default") from None


def _custom_preprocessing() -> dict[str, Any]:
    """The preprocessing object of the custom fields: only the filled ones (the engine checks the values)."""
    ss = st.session_state
    spec: dict[str, Any] = {}
    for field, key in PREP_FIELDS.items():
        text = str(ss[key]).strip()
        if not text:
            continue
        if field == "interpolation":
            spec[field] = text
        elif field in ("resize", "crop"):
            sizes = _numbers(text, field, integers=True)
            spec[field] = sizes[0] if len(sizes) == 1 else sizes
        else:
            spec[field] = _numbers(text, field, integers=False)
    return spec


def _file_spec(path: Path) -> dict[str, Any]:
    """The ``{"kind": "file"}`` spec of the file pickers, with "auto" resolved so the export says what it is."""
    ss = st.session_state
    fmt = ss["src_m_format"]
    if fmt == "auto":
        fmt = detect_format(check_model_file(path))
    spec: dict[str, Any] = {"kind": "file", "path": str(path), "format": fmt}
    if fmt == "state_dict" and ss["src_m_arch"] != NO_ARCHITECTURE:
        spec["architecture"] = ss["src_m_arch"]
    if fmt == "torchscript":
        spec["input_shape"] = _input_shape(ss["src_m_shape"])
    if ss["src_m_prep"] == CUSTOM_PREPROCESSING:
        spec["preprocessing"] = _custom_preprocessing()
    elif ss["src_m_prep"] != DEFAULT_PREPROCESSING:
        spec["preprocessing"] = ss["src_m_prep"]
    return spec


def _model_spec(created: list[Path], names: dict[str, str]) -> str | dict[str, Any]:
    ss = st.session_state
    source = ss["src_m_from"]
    if source == "registered":
        return state.spec_value(ss["src_m_name"])
    if source == "path":
        return _file_spec(uploads.check_dashboard_path(ss["src_m_path"], what="model file"))
    uploaded = ss.get("src_m_upload")
    if uploaded is None:
        raise DataError("model upload: no file chosen; allowed: a .pt, .pth or .pt2 file (drop it on the uploader)")
    path, new = uploads.store_model_upload(uploaded.getvalue(), uploaded.name)
    if new:
        created.append(path)
    names[str(path)] = names[path.name] = f"{uploaded.name} (uploaded)"
    return _file_spec(path)


def _data_spec(created: list[Path], names: dict[str, str]) -> str | dict[str, Any]:
    ss = st.session_state
    source = ss["src_d_from"]
    if source == "registered":
        return state.spec_value(ss["src_d_name"])
    if picked_modality() == "text":
        return _text_spec(created, names)
    if source == "path":
        folder = uploads.check_dashboard_path(ss["src_d_path"], what="image folder")
    else:
        uploaded = ss.get("src_d_zip")
        if uploaded is None:
            raise DataError("zip upload: no file chosen; allowed: a .zip of images (class sub-folders, labels.csv, "
                            "or a flat folder)")
        folder, new = uploads.store_zip_upload(uploaded.getvalue(), uploaded.name)
        if new:
            created.append(folder)
        names[str(folder)] = f"{uploaded.name} (uploaded)"
    if not folder.is_dir():
        raise DataError(f"image folder: {str(folder)!r} is not a folder; allowed: a folder of images")
    return image_folder_spec(folder, num_calibration=int(ss["src_d_num_cal"]) or None, seed=int(ss["src_d_seed"]),
                             max_images=int(ss["src_d_max_images"]) or None)


def _text_spec(created: list[Path], names: dict[str, str]) -> dict[str, Any]:
    """The ``text_file`` spec of the text pickers: a typed path or an upload (the engine reads and checks the file)."""
    ss = st.session_state
    if ss["src_d_from"] == "path":
        path = uploads.check_dashboard_path(ss["src_d_path"], what="text file")
    else:
        uploaded = ss.get("src_d_text")
        if uploaded is None:
            raise DataError("text upload: no file chosen; allowed: a .txt file (one text a line) or a .csv (columns "
                            "text and, optionally, label)")
        path, new = uploads.store_text_upload(uploaded.getvalue(), uploaded.name)
        if new:
            created.append(path)
        names[str(path)] = names[path.name] = f"{uploaded.name} (uploaded)"
    return {"kind": TEXT_FILE, "path": str(path), "num_calibration": int(ss["src_d_num_cal"]) or None,
            "seed": int(ss["src_d_seed"]), "max_lines": int(ss["src_d_max_images"]) or None}


def check_pair(model: str | dict[str, Any], dataset: str | dict[str, Any], fold_batchnorm: bool) -> Explorer:
    """Load the pair through the shared cache and trace the model on one sample; PTQError if anything fails."""
    uploads.check_spec_paths(model, dataset)
    explorer = resources.get_explorer(json.dumps(model, sort_keys=True), json.dumps(dataset, sort_keys=True))
    explorer.prepared(fold_batchnorm)
    return explorer


def _fit_calibration_size(pool: int) -> str | None:
    """Fit the calibration-size control to the loaded data: at most its calibration pool (say so), else what was asked.

    The size asked for is remembered while it is capped, so loading a larger data set again gives it back.
    """
    ss = st.session_state
    wanted = ss.get("cal_asked") or int(ss["sb_cal_num_samples"])
    if wanted > pool:
        ss["sb_cal_num_samples"], ss["cal_asked"] = pool, wanted
        return f"Calibration samples set to {pool}, the whole calibration pool of this data set ({wanted} asked)."
    ss["sb_cal_num_samples"], ss["cal_asked"] = wanted, None
    return None


def _load() -> None:
    """The Load button: build and check the chosen pair, then (only then) make it the config's."""
    ss = st.session_state
    created: list[Path] = []
    names: dict[str, str] = {}  # stored upload path or file name -> the name the user uploaded
    try:
        model = _model_spec(created, names)
        dataset = _data_spec(created, names)
        explorer = check_pair(model, dataset, bool(ss["sb_fold_bn"]))
    except PTQError as exc:
        for path in created:  # an upload that does not load is of no use to anyone: do not keep it
            uploads.remove_upload(path)
        message = str(exc)
        for stored in sorted(names, key=len, reverse=True):  # the user knows their file's name, not its hash
            message = message.replace(stored, names[stored])
        ss["src_error"] = (f"Not loaded, nothing changed: {message}", _snapshot())  # shown until a picker changes
        return
    model_value, data_value = labels.spec(model), labels.spec(dataset)
    if model_value != ss["sb_model"]:  # a new model: no layer names of the old one
        ss["sb_keep_float"] = []
        ss["cfg_overrides"] = {}
    ss["sb_model"], ss["sb_dataset"] = model_value, data_value
    ss["src_synced"] = (model_value, data_value)
    ss["src_snapshot"] = None
    ss["src_error"] = None
    # a typed path: show the resolved, checked path (and the detected format) the config now names
    typed = tuple(prefix for prefix in ("src_m_", "src_d_") if ss[f"{prefix}from"] == "path")
    ss.update({k: v for k, v in _pickers_for(model_value, data_value).items() if k.startswith(typed)})
    fitted = _fit_calibration_size(len(explorer.dataset.calibration_pool))  # type: ignore[arg-type]
    state.flash("success", f"Loaded {model_label(model_value)} on {data_label(data_value)}." + (f" {fitted}" if fitted else ""))


def upload_limit_mb(kind: str) -> tuple[int | None, str]:
    """(the uploader's own limit in MiB, a sentence saying where it comes from) for ``kind`` model | zip | text.

    The limit is this server's (``PTQ_MAX_MODEL_MB`` / ``PTQ_MAX_UPLOAD_MB``), capped by Streamlit's
    ``server.maxUploadSize`` (the repository's ``.streamlit/config.toml`` sets it to the default
    ``PTQ_MAX_MODEL_MB``): the browser then refuses a larger file before sending it. ``None``
    (Streamlit's own limit) when an environment variable is not a number; storing the upload says so.
    """
    streamlit_mb = int(st.get_option("server.maxUploadSize"))
    try:
        ours = min(max_model_bytes(), max_upload_bytes()) if kind == "model" else max_upload_bytes()
        kept = f" Uploads not repeated for {upload_max_age_s() // 3600} h are removed from the server."
    except DataError:
        return None, f"Streamlit accepts files up to {streamlit_mb} MiB (server.maxUploadSize)."
    envs = f"{MAX_MODEL_MB_ENV} / {MAX_UPLOAD_MB_ENV}" if kind == "model" else MAX_UPLOAD_MB_ENV
    ours_mb = max(1, ours // (1024 * 1024))
    if ours_mb <= streamlit_mb:
        return ours_mb, f"Files up to {ours_mb} MiB ({envs}).{kept}"
    return streamlit_mb, (f"Files up to {streamlit_mb} MiB: Streamlit's server.maxUploadSize is lower than this server's "
                          f"{ours_mb} MiB ({envs}); the operator raises it in .streamlit/config.toml.{kept}")


def _choose(key: str, value: str) -> Callable[[], None]:
    def callback() -> None:
        st.session_state[key] = value
    return callback


def _choose_model(source: str | None) -> Callable[[], None]:
    """A model picker's callback: choose that source (None: the radio did), and fit the data pickers to the model."""
    def callback() -> None:
        if source is not None:
            st.session_state["src_m_from"] = source
        _fit_data_to_model()
    return callback


def _fit_data_to_model() -> None:
    """A model of the other modality was picked: show its default data set (a text model reads no images)."""
    ss = st.session_state
    modality = picked_modality()
    if ss.get("src_d_modality", "image") == modality:
        return
    default: str = "digits"
    if ss["src_m_from"] == "registered":
        try:
            default = labels.spec(get_model_entry(state.spec_value(ss["src_m_name"])).default_dataset)
        except PTQError:
            pass  # Load says what is wrong with the model
    ss.update({**_defaults_of("src_d_"), **_data_pickers(default), "src_d_modality": modality})


def _defaults_of(prefix: str) -> dict[str, Any]:
    return {k: v for k, v in _defaults().items() if k.startswith(prefix)}


# -- drawing -------------------------------------------------------------------------------------
def render() -> None:
    """Draw the section in the sidebar (before any control that reads the model's layer names)."""
    ss = st.session_state
    _sync_pickers()
    sb = st.sidebar
    roots = ", ".join(str(r) for r in uploads.allowed_roots() if not uploads.is_upload(r)) or "none configured"

    m_from = ss["src_m_from"]
    sb.radio("Model from", list(MODEL_FROM), key="src_m_from", format_func=MODEL_FROM.get, on_change=_choose_model(None))
    sb.selectbox("Registered model", _options_with(ss["src_m_name"], model_options()), key="src_m_name",
                 format_func=model_label, on_change=_choose_model("registered"),
                 help="Random-weights variants need no download; they report agreement with FP32, never accuracy. "
                      "The text model reads sentences (a .txt or .csv file); every other model reads images.")
    with sb.expander("Your own model file", expanded=m_from != "registered"):
        st.text_input("Path on the server", key="src_m_path", on_change=_choose_model("path"),
                      help=f"A .pt/.pth/.pt2 file under the data roots: {roots}.")
        model_mb, model_limit = upload_limit_mb("model")
        st.file_uploader("Upload", key="src_m_upload", on_change=_choose_model("upload"),
                         max_upload_size=model_mb,
                         help="Kept on this server, named by its SHA-256. TorchScript, torch.export (.pt2) or a "
                              f"state dict; nothing in it is unpickled as Python objects. {model_limit}")
        file_off = m_from == "registered"
        fmt = ss["src_m_format"]
        c1, c2 = st.columns(2)
        c1.selectbox("Format", list(FORMATS), key="src_m_format", format_func=lambda v: FORMAT_LABELS.get(v, v), disabled=file_off)
        c2.text_input("Input shape", key="src_m_shape", disabled=file_off or fmt not in ("auto", "torchscript"),
                      help="TorchScript only: one sample's shape, e.g. 3, 224, 224 or 1, 8, 8. A .pt2 carries its own.")
        st.selectbox("Architecture (state dicts)", [NO_ARCHITECTURE, *available_models()], key="src_m_arch",
                     format_func=lambda v: v or "none (TorchScript or .pt2)",
                     disabled=file_off or fmt not in ("auto", "state_dict"),
                     help="The registered model the state dict was saved from; its layers get the file's weights.")
        st.selectbox("Preprocessing", _preprocessing_options(), key="src_m_prep", disabled=file_off,
                     format_func=lambda v: {"default": "default (the architecture's, else the model's input size "
                                                       "with ImageNet mean/std)",
                                            "custom": "custom (the fields below)",
                                            "imagenet": "imagenet (resize 256, crop 224)",
                                            "none": "none (tensor data such as digits)"}.get(v, f"as {v}"),
                     help="How images become the model's input. Say it when the model was trained otherwise: "
                          "the Result warns whenever it was defaulted or its crop disagrees with the model's input.")
        custom_off = file_off or ss["src_m_prep"] != CUSTOM_PREPROCESSING
        c1, c2, c3 = st.columns(3)
        c1.text_input("Resize", key="src_m_resize", disabled=custom_off, placeholder="crop / 0.875",
                      help="Shorter side before the center crop, in pixels. Empty: round(crop / 0.875), e.g. 256 for 224.")
        c2.text_input("Crop", key="src_m_crop", disabled=custom_off, placeholder="model's input",
                      help="Center crop: 240, or height, width. Empty: the model's input size (a .pt2's example "
                           "input, else the input shape), else 224.")
        c3.selectbox("Interpolation", ["", *INTERPOLATIONS], key="src_m_interp", disabled=custom_off,
                     format_func=lambda v: v or "bilinear (default)")
        c1, c2 = st.columns(2)
        c1.text_input("Mean", key="src_m_mean", disabled=custom_off, placeholder="ImageNet",
                      help="Per RGB channel, on the 0-1 scale, e.g. 0.5, 0.5, 0.5. Empty: ImageNet's 0.485, 0.456, 0.406.")
        c2.text_input("Std", key="src_m_std", disabled=custom_off, placeholder="ImageNet",
                      help="Per RGB channel, positive, e.g. 0.5, 0.5, 0.5. Empty: ImageNet's 0.229, 0.224, 0.225.")

    _data_section(roots)

    snapshot = _snapshot()
    if ss.get("src_snapshot") is None:
        ss["src_snapshot"] = snapshot
    pending = snapshot != ss["src_snapshot"]
    sb.button("Load model and data", key="src_load", on_click=_load, width="stretch",
              type="primary" if pending else "secondary",
              help="Checks the model and the data together first; the config changes only if both load.")
    error = ss.get("src_error")
    if error is not None and error[1] == snapshot:
        sb.error(error[0])
    elif pending:
        sb.caption("Changed: press **Load** to use these choices (the config still uses the loaded ones).")
    _describe_loaded()


def _data_section(roots: str) -> None:
    """The data pickers for the picked model's modality: an image folder or zip, or a text file (typed or uploaded)."""
    ss = st.session_state
    sb = st.sidebar
    d_from = ss["src_d_from"]
    text = picked_modality() == "text"
    sources = TEXT_DATA_FROM if text else DATA_FROM
    sb.radio("Data from", list(sources), key="src_d_from", format_func=sources.get)
    sb.selectbox("Registered data set", _options_with(ss["src_d_name"], data_options("text" if text else "image")),
                 key="src_d_name", format_func=data_label, on_change=_choose("src_d_from", "registered"))
    with sb.expander("Text file" if text else "Image folder", expanded=d_from != "registered"):
        # Path, split and size pickers are shared by both kinds (Streamlit keys them by key, not by label);
        # the uploaders are not: a zip and a text file are different files.
        if text:
            st.text_input("File on the server", key="src_d_path", on_change=_choose("src_d_from", "path"),
                          help="A UTF-8 .txt file (one text a line, unlabeled) or a .csv with a text column and, "
                               f"optionally, a label column (topics), under: {roots}.")
            text_mb, text_limit = upload_limit_mb("text")
            st.file_uploader("Text file (.txt or .csv)", type=["txt", "csv"], key="src_d_text",
                             on_change=_choose("src_d_from", "upload"), max_upload_size=text_mb,
                             help=f"Kept on this server, named by its SHA-256. {text_limit}")
        else:
            st.text_input("Folder on the server", key="src_d_path", on_change=_choose("src_d_from", "path"),
                          help=f"Class sub-folders, a folder with labels.csv, or a flat folder (unlabeled), under: {roots}.")
            zip_mb, zip_limit = upload_limit_mb("zip")
            st.file_uploader("Zip of images", type=["zip"], key="src_d_zip", on_change=_choose("src_d_from", "upload"),
                             max_upload_size=zip_mb,
                             help="Extracted once on this server; a zip holding one top-level folder is read from "
                                  f"inside it. {zip_limit}")
        what = "Texts" if text else "Images"
        off = d_from == "registered"
        c1, c2, c3 = st.columns(3)
        c1.number_input("Calibration", min_value=0, step=16, key="src_d_num_cal", disabled=off,
                        help=f"{what} set aside as the calibration pool (0: "
                             + ("a quarter of the file, at most 128" if text else "min(128, half the folder)")
                             + "); the rest evaluate.")
        c2.number_input("Split seed", min_value=0, step=1, key="src_d_seed", disabled=off)
        c3.number_input("Max lines" if text else "Max images", min_value=0, step=100, key="src_d_max_images",
                        disabled=off, help=f"Read only the first N {what.lower()} in file order (0: all).")


def _describe_loaded() -> None:
    """What the config uses now, said honestly: random weights, unlabeled data, uploads, float layers."""
    ss = st.session_state
    sb = st.sidebar
    model, dataset = state.spec_value(ss["sb_model"]), state.spec_value(ss["sb_dataset"])
    try:
        explorer: Explorer = resources.get_explorer(json.dumps(model, sort_keys=True), json.dumps(dataset, sort_keys=True))
        prepared = explorer.prepared(bool(ss["sb_fold_bn"]))
    except PTQError:
        return  # the Layers section below shows the message
    notes = [f"Loaded: **{model_label(ss['sb_model'])}** on **{data_label(ss['sb_dataset'])}**."]
    if not explorer.entry.pretrained:
        notes.append("**Random weights**: no accuracy is reported, only agreement with FP32.")
    if explorer.dataset.evaluation_labels is None:
        notes.append("**Unlabeled texts**: the numbers are closeness to FP32, not topic accuracy."
                     if explorer.entry.modality == "text" else
                     "**Unlabeled images**: the numbers are agreement with FP32, not accuracy.")
    sb.caption(" ".join(notes), help=explorer.entry.description + "\n\n" + explorer.dataset.description)
    for warning in explorer.entry.warnings:  # preprocessing defaulted or disagreeing with the model's input
        sb.warning(warning, icon=":material/warning:")
    where = uploads.uploads_in(model, dataset)
    if where:
        sb.caption(f":material/cloud_upload: The {' and '.join(where)} {'is' if len(where) == 1 else 'are'} an upload "
                   "in this server's upload folder: an exported config names that path, so it reproduces only on "
                   "this server.")
    if prepared.unsupported:
        sb.info("ptq_core does not quantize these layers with weights; they stay in float: "
                + ", ".join(prepared.unsupported))
