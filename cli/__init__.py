"""The ``lam`` command: the command-line front end, above the components it starts, asks and sets up."""

# The folder installs as lamcontrol.cli; imported by its bare name it would be a second copy of
# every module, whose events and classes are not the installed ones.
if __name__ != "lamcontrol.cli":
    raise ImportError(f"import lamcontrol.cli, not {__name__}: the cli/ folder installs inside "
                      "the lamcontrol package (pip install -e . in the checkout)")
