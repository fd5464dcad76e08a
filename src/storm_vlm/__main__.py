"""``python -m storm_vlm`` = the ``storm-vlm`` command."""

from .cli import main

main()
