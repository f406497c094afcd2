"""``python -m edgeq``: the same as the ``edgeq`` command."""
from edgeq.cli import main

main()
