from dataplane.cli import main

raise SystemExit(main())
