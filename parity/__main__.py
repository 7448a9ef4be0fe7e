import sys

from parity.gate import main

sys.exit(main())
