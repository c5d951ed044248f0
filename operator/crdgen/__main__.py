"""`python -m crdgen`: see `crdgen.cli`."""

from crdgen.cli import main

raise SystemExit(main())
