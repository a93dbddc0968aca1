"""dd-medical: the untrained Deep Decoder (Heckel & Hand, ICLR 2019) for CT/MR denoising, reconstruction and
compression. No training data, no downloaded weights.

```python
import dd_medical

clean_hu = dd_medical.denoise(noisy_hu)            # numpy (H, W) or (D, H, W) in HU -> same shape, HU
volume = dd_medical.denoise("path/to/ct_series")   # a DICOM folder or NIfTI/NRRD/MHA file -> Volume
```
"""

from __future__ import annotations

from .api import baseline, check, compress, decompress, denoise, estimate_noise, reconstruct, simulate
from .core.config import FitConfig
from .core.decoder import BatchedDeepDecoder, DeepDecoder, num_parameters
from .core.fit import FitResult, fit
from .core.intensity import Window, default_window
from .errors import DDMedicalError, InputError
from .presets import STRENGTHS, resolve
from .version import __version__
from .volume import Volume

__all__ = [
    "STRENGTHS",
    "BatchedDeepDecoder",
    "DDMedicalError",
    "DeepDecoder",
    "FitConfig",
    "FitResult",
    "InputError",
    "Volume",
    "Window",
    "__version__",
    "baseline",
    "check",
    "compress",
    "decompress",
    "default_window",
    "denoise",
    "estimate_noise",
    "fit",
    "num_parameters",
    "reconstruct",
    "resolve",
    "simulate",
]
