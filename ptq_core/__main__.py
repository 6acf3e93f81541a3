"""``python -m ptq_core``: see :mod:`ptq_core.cli`."""

from .cli import main

raise SystemExit(main())
