"""``python -m nbagent`` is the ``nbagent`` command."""

from nbagent.apps.cli import main

raise SystemExit(main())
