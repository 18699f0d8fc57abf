import sys

from longvos.cli.main import main

sys.exit(main())
