"""``python -m ptq_core``: see :mod:`ptq_core.cli`.

The process is set up as the dashboard's is, so the same config gives the same numbers and
shares the disk cache with it: the allocator keeps freed buffers (:mod:`ptq_core.allocator`),
and every op runs on one thread while batches run side by side on all cores
(:mod:`ptq_core.parallel`).
"""

import torch

from .allocator import tune_malloc
from .cli import main

tune_malloc()
torch.set_num_threads(1)
raise SystemExit(main())
