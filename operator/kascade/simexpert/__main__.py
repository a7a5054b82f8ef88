from kascade.simexpert.server import main

raise SystemExit(main())
