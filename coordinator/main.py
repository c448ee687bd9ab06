"""``lam-coordinator``: parse prompts, route tasks to agents, answer every prompt."""

from __future__ import annotations

import sys

from lamcontrol import config as lamconfig
from lamcontrol.bus import BrokerSettings
from lamcontrol.service import component_parser, restart, run_service, setup_logging

from . import control, discovery, metrics
from .journal import Journal
from .parsing import build_parser
from .service import Coordinator
from .settings import Settings


EXTENSIONS = (control.extension, discovery.extension, metrics.extension)  # each: the config -> a factory, or None when off


def build(cfg: dict) -> Coordinator:
    """A coordinator configured from a loaded config, with the extensions the config turns on."""
    section = cfg["coordinator"]
    journal = Journal(lamconfig.state_path("coordinator", "journal", section["journal"]), float(section["journal_days"]))
    coordinator = Coordinator(BrokerSettings.from_config(cfg), build_parser(cfg), journal,
                              Settings.from_config(section))
    for configured in EXTENSIONS:
        factory = configured(cfg)
        if factory is not None:
            factory(coordinator.bus, coordinator.events)
    return coordinator


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
    if run_service(coordinator.bus.ready.is_set, coordinator.stop, "coordinator"):
        restart()  # asked for over MQTT (see control.py)
    return 0


if __name__ == "__main__":
    sys.exit(main())
