"""``python -m medad``: the command line, also what ``torchrun -m medad train ...`` starts."""

from medad.cli import app

app(prog_name="medad")
