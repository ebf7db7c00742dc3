import sys

from oauth2_server.cli.main import main

sys.exit(main())
