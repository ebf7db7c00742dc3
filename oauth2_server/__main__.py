import sys

from oauth2_server.cli import main

sys.exit(main())
