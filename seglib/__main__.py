from seglib.cli import main

raise SystemExit(main())
