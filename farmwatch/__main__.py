from farmwatch.cli import main

raise SystemExit(main())
