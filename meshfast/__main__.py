from meshfast.cli import main

raise SystemExit(main())
