"""A DICOM node: CT/MR series in by C-STORE, each complete series denoised as a batch task, the derived series out
by C-STORE to a destination; nothing acknowledged is ever lost (``pip install 'dd-medical[node]'``).

```python
from dd_medical.node import Destination, Node, NodeConfig
from dd_medical.presets import resolve

config = NodeConfig(work_dir="/var/lib/dd-medical", destination=Destination.parse("PACS@10.0.0.5:104"),
                    ae_title="DDMED", port=11112, fit=resolve("denoise", "fast"))
Node(config).serve()            # until Node.stop(); Node(config).run_once() processes what is pending and returns
```

Modules: :mod:`.receiver` (the C-STORE SCP), :mod:`.service` (settling, processing with
:func:`dd_medical.batch.run_batch`, sending with backoff, recovery after a kill), :mod:`.sender` (C-STORE SCU),
:mod:`.state` (``node.sqlite``), :mod:`.workdir` (the work dir's layout), :mod:`.logs` (structured logs) and
:mod:`.command` (``dd-medical node``). ``pynetdicom`` is imported only where the network is used.
"""

from __future__ import annotations

from .receiver import STORAGE_CLASSES, Limits, Receiver, Refused, transfer_syntaxes
from .sender import Destination, send_folder
from .service import DEFAULT_SETTLE, Node, NodeConfig, status_lines
from .state import SERIES_STATUSES, STATE_NAME, NodeState
from .workdir import WorkDir

__all__ = [
    "DEFAULT_SETTLE",
    "SERIES_STATUSES",
    "STATE_NAME",
    "STORAGE_CLASSES",
    "Destination",
    "Limits",
    "Node",
    "NodeConfig",
    "NodeState",
    "Receiver",
    "Refused",
    "WorkDir",
    "send_folder",
    "status_lines",
    "transfer_syntaxes",
]
