"""``python -m txacme``: the operator's command line (see :mod:`txacme.cli`)."""

from txacme.cli import main

raise SystemExit(main())
