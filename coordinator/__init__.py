"""The coordinator: turns sentences into commands and routes them as tasks."""

# The folder installs as lamcontrol.coordinator; imported by its bare name it would be a second copy of
# every module, whose events and classes are not the installed ones.
if __name__ != "lamcontrol.coordinator":
    raise ImportError(f"import lamcontrol.coordinator, not {__name__}: the coordinator/ folder installs inside "
                      "the lamcontrol package (pip install -e . in the checkout)")
