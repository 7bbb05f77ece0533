"""MasaCtrl's processors and controller, kept importable here: they live in engine.methods.masactrl."""

from engine.methods.masactrl import (  # noqa: F401
    _CONTROLLER_ATTR,
    BatchLayoutError,
    CrossAttnRecorder,
    MutualAttentionController,
    MutualSelfAttnProcessor,
    RowControl,
    _call_original,
    _ControlledProcessor,
    _Plan,
    _resize_mask,
    _step_pre_hook,
    binarize,
    block_paths,
    install_control,
    masked_allowed,
    normalize_map,
    otsu_threshold,
    remove_control,
)
