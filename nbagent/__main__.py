"""``python -m nbagent`` is the ``nbagent`` command."""

from nbagent.cli import main

raise SystemExit(main())
