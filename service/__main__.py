"""`python -m service` runs the same CLI as the `selfinstruct` console script."""

from service.cli import main

raise SystemExit(main())
