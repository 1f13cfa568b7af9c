from kbuild.cli import app

app(prog_name="patch-build")
