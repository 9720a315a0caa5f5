import sys

from jaxflash.train.cli import main

sys.exit(main())
