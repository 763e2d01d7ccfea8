"""Let Suite2p import inside its benchmark venv without torchvision.

suite2p imports cellpose, which imports torchvision at module level; torchvision from PyPI does
not load with the CPU torch used here, and neither registration nor detection (sparsery) uses it.
Empty stand-in modules satisfy those imports. Only the benchmarks' Suite2p workers call this.
"""

import sys
import types


def stub_torchvision() -> None:
    tv = types.ModuleType("torchvision")
    tr = types.ModuleType("torchvision.transforms")
    tr.functional = types.ModuleType("torchvision.transforms.functional")
    tr._functional_tensor = types.ModuleType("torchvision.transforms._functional_tensor")
    tv.transforms = tr
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tr,
                        "torchvision.transforms.functional": tr.functional,
                        "torchvision.transforms._functional_tensor": tr._functional_tensor})
