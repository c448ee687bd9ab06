"""The HTTP bridge: relays prompts from the Rabbit R1 and other HTTP clients to the bus."""

# The folder installs as lamcontrol.r1_bridge; imported by its bare name it would be a second copy of
# every module, whose events and classes are not the installed ones.
if __name__ != "lamcontrol.r1_bridge":
    raise ImportError(f"import lamcontrol.r1_bridge, not {__name__}: the r1_bridge/ folder installs inside "
                      "the lamcontrol package (pip install -e . in the checkout)")
