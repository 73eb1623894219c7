import sys

from mount.main import main

sys.exit(main())
