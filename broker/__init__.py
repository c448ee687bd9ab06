"""The embedded MQTT broker (aMQTT) with LAMControl's logins and ACL."""

# The folder installs as lamcontrol.broker; imported by its bare name it would be a second copy of
# every module, whose events and classes are not the installed ones.
if __name__ != "lamcontrol.broker":
    raise ImportError(f"import lamcontrol.broker, not {__name__}: the broker/ folder installs inside "
                      "the lamcontrol package (pip install -e . in the checkout)")
