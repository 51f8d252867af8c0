"""`python -m ukcancel.cli`: the `ukcancel` command (how `ukcancel run` starts its parts)."""

from ukcancel.cli import main

main(prog_name="ukcancel")
