"""mobilenets: efficient convolutional networks (MobileNet V1/V2/V3) for PyTorch.

Build a model at the size your latency budget allows, measure what it costs, and
load torchvision's published weights::

    import mobilenets
    model = mobilenets.create_model("mobilenet_v2", width_mult=0.5)
    print(mobilenets.profile(model, (3, 160, 160)))   # mult-adds, params, memory
"""

from .cost import Profile, profile
from .decouple import decompose, decouple
from .errors import ConfigError, InputShapeError, MobileNetsError, UnknownModelError, WeightsError
from .models import create_model, list_models
from .weights import load_model, load_weights, save_weights

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "InputShapeError",
    "MobileNetsError",
    "Profile",
    "UnknownModelError",
    "WeightsError",
    "__version__",
    "create_model",
    "decompose",
    "decouple",
    "list_models",
    "load_model",
    "load_weights",
    "profile",
    "save_weights",
]
