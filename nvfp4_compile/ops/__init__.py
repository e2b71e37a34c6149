"""torch.library ops in the `nvfp4` namespace. Importing this package registers all of them."""
from . import source  # noqa: F401
from . import moe  # noqa: F401
from . import marlin  # noqa: F401
from . import marlin_moe  # noqa: F401
