"""``lam-coordinator``: parse prompts, route tasks to agents, answer every prompt."""

from __future__ import annotations

import sys

from lamcontrol import config as lamconfig
from lamcontrol.bus import BrokerSettings
from lamcontrol.service import component_parser, run_service, setup_logging

from .journal import Journal
from .parsing import build_parser
from .service import Coordinator


def build(cfg: dict) -> Coordinator:
    """A coordinator configured from a loaded config."""
    section = cfg["coordinator"]
    journal = Journal(lamconfig.state_path("coordinator", "journal", section["journal"]), float(section["journal_days"]))
    return Coordinator(BrokerSettings.from_config(cfg), build_parser(cfg), journal,
                       ack_timeout=float(section["ack_timeout"]), prompt_timeout=float(section["prompt_timeout"]),
                       task_timeout=float(section["task_timeout"]), confirm_window=float(section["confirm_window"]),
                       heartbeat=float(section["heartbeat"]), discovery_prefix=discovery_prefix(cfg),
                       metrics_port=int(section["metrics_port"]), metrics_bind=section["metrics_bind"])


def discovery_prefix(cfg: dict) -> str:
    """Home Assistant's discovery prefix, or '' when discovery is off."""
    section = cfg["homeassistant"]
    return section["discovery_prefix"] if section["enabled"] else ""


def main(argv: list[str] | None = None) -> int:
    parser = component_parser("lam-coordinator", __doc__)
    parser.add_argument("--journal", help="SQLite journal path (default: [coordinator] journal)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        cfg = lamconfig.load(args.config, args.broker)
        if args.journal:
            cfg["coordinator"]["journal"] = args.journal
        coordinator = build(cfg)
    except lamconfig.ConfigError as exc:
        print(f"lam-coordinator: {exc}", file=sys.stderr)
        return 2
    coordinator.start()
    run_service(coordinator.bus.ready.is_set, coordinator.stop, "coordinator")
    return 0


if __name__ == "__main__":
    sys.exit(main())
