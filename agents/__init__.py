"""The agent: capabilities that act on this machine, and the runtime that feeds them tasks."""

# The folder installs as lamcontrol.agents; imported by its bare name it would be a second copy of
# every module, whose events and classes are not the installed ones.
if __name__ != "lamcontrol.agents":
    raise ImportError(f"import lamcontrol.agents, not {__name__}: the agents/ folder installs inside "
                      "the lamcontrol package (pip install -e . in the checkout)")
