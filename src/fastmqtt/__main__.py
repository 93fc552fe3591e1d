from fastmqtt.cli import main

raise SystemExit(main())
