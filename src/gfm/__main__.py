from gfm.cli import main

raise SystemExit(main())
