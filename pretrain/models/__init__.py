"""Models: the MLP-Mixer architecture, named variants, any timm model, FLOP counts, and weight loading/saving."""

from pretrain.models.flops import mixer_flops_per_image
from pretrain.models.mixer import MlpMixer
from pretrain.models.registry import create_model, is_mixer, list_models, mixer_for_weights, model_problem
from pretrain.models.weights import WeightsError, load_weights, read_weights, save_weights

__all__ = [
    "MlpMixer",
    "WeightsError",
    "create_model",
    "is_mixer",
    "list_models",
    "load_weights",
    "read_weights",
    "mixer_flops_per_image",
    "mixer_for_weights",
    "model_problem",
    "save_weights",
]
