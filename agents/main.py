"""``lam-agent``: run one or more capabilities on this machine."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from lamcontrol import config as lamconfig
from lamcontrol.bus import BrokerSettings
from lamcontrol.protocol import ProtocolError, check_agent_id
from lamcontrol.service import component_parser, run_service, setup_logging

from . import capability
from .runtime import Agent

log = logging.getLogger("lam-agent")


def load_capabilities(names: list[str], settings: dict,
                      optional: bool = False) -> tuple[dict[str, capability.Capability], dict[str, str]]:
    """The capabilities that can run here, and why each other one cannot (its sentence says the fix;
    the agent tells the coordinator, whose replies repeat it). Each left out is logged, as an error
    when it was asked for by name, as a note when ``optional``."""
    loaded, left_out = {}, {}
    for name in names:
        try:
            cap = capability.load(name)(settings.get(name, {}))
            cap.check()
            cap.start()
        except (capability.Unavailable, ValueError) as exc:
            log.log(logging.INFO if optional else logging.ERROR, "not offering %s: %s", name, exc)
            left_out[name] = str(exc)
            continue
        loaded[name] = cap
        log.info("offering %s: %s", name, ", ".join(cap.actions()))
    return loaded, left_out


def main(argv: list[str] | None = None) -> int:
    parser = component_parser("lam-agent", __doc__)
    parser.add_argument("--id", help="agent id (default: [agent] id, else the host name)")
    parser.add_argument("--capability", "-c", action="append", help="capability to offer (repeatable)")
    parser.add_argument("--max-concurrent", type=int, help="tasks run at once (default 4)")
    parser.add_argument("--max-queued", type=int, help="tasks accepted beyond that, run as slots free (default 8)")
    parser.add_argument("--all", action="store_true", help="offer every installed capability that can run here")
    parser.add_argument("--list", action="store_true", help="list installed capabilities and exit")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.list:
        for name in lamconfig.installed_capabilities():
            print(name)
        return 0
    try:
        cfg = lamconfig.load(args.config, args.broker)
        if "path" in cfg:  # capabilities that read shared sections ([groq]) find the same file
            os.environ["LAM_CONFIG"] = cfg["path"]
        section = cfg["agent"]
        agent_id = check_agent_id(args.id or section["id"] or lamconfig.default_agent_id())
        settings = BrokerSettings.from_config(cfg)
    except (lamconfig.ConfigError, ProtocolError) as exc:
        print(f"lam-agent: {exc}", file=sys.stderr)
        return 2
    if args.all:
        capabilities, left_out = load_capabilities(lamconfig.installed_capabilities(), cfg["capabilities"],
                                                   optional=True)
    else:
        capabilities, left_out = load_capabilities(args.capability or section["capabilities"], cfg["capabilities"])
    if not capabilities:
        print("lam-agent: no capability can run here (see the messages above)", file=sys.stderr)
        return 2
    agent = Agent(agent_id, capabilities, settings, max_concurrent=args.max_concurrent or section["max_concurrent"],
                  heartbeat=float(section["heartbeat"]), stop_grace=float(section["stop_grace"]),
                  max_queued=section["max_queued"] if args.max_queued is None else args.max_queued, left_out=left_out,
                  task_record=task_record(agent_id))
    agent.start()
    return run_service(agent.bus.ready.is_set, agent.stop, f"agent {agent_id}", agent.bus.gave_up)


def task_record(agent_id: str) -> Path | None:
    """Where the agent keeps the tasks it accepted; None (logged) when the state directory cannot be made."""
    try:
        return lamconfig.state_dir() / f"agent-{agent_id}-tasks.jsonl"
    except OSError as exc:
        log.error("no state directory (%s): a restart will forget the tasks this agent accepted", exc)
        return None


if __name__ == "__main__":
    sys.exit(main())
