import sys

from jaxflash.inference.cli import main

sys.exit(main())
