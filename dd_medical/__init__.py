"""dd-medical: the untrained Deep Decoder (Heckel & Hand, ICLR 2019) for CT/MR denoising and reconstruction.

```python
import dd_medical

clean_hu = dd_medical.denoise(noisy_hu)            # numpy (H, W) or (D, H, W) in HU -> same shape, HU
volume = dd_medical.denoise("path/to/ct_series")   # a DICOM folder or NIfTI/NRRD/MHA file -> Volume
```
"""

from __future__ import annotations

from .api import denoise
from .decoder import BatchedDeepDecoder, DeepDecoder, num_parameters
from .errors import DDMedicalError, InputError
from .fitting import FitConfig, FitResult, fit
from .intensity import Window, default_window
from .pipeline import denoise_volume
from .volume import Volume

__version__ = "0.1.0"

__all__ = [
    "BatchedDeepDecoder",
    "DDMedicalError",
    "DeepDecoder",
    "FitConfig",
    "FitResult",
    "InputError",
    "Volume",
    "Window",
    "__version__",
    "default_window",
    "denoise",
    "denoise_volume",
    "fit",
    "num_parameters",
]
