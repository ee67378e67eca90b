"""``python -m streams.schemas``: regenerate (or ``--check``) the wire JSON Schemas."""

from streams.schemas import main

raise SystemExit(main())
