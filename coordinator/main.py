"""``lam-coordinator``: parse prompts, route tasks to agents, answer every prompt."""

from __future__ import annotations

import sys
from typing import Callable

from lamcontrol import config as lamconfig
from lamcontrol.bus import BrokerSettings
from lamcontrol.cluster import ClusterSettings
from lamcontrol.service import component_parser, run_service, setup_logging

from . import discovery, metrics
from .journal import Journal, StreamJournal
from .leader import Leadership
from .parsing import build_parser
from .service import Coordinator
from .settings import Settings


EXTENSIONS = (discovery.extension, metrics.extension)  # each: the config -> a factory, or None when off


def build(cfg: dict, journal: Journal | StreamJournal | None = None, epoch: int = 0,
          may_connect: Callable[[], bool] = lambda: True) -> Coordinator:
    """A coordinator configured from a loaded config, with the extensions the config turns on; on a
    cluster, with the stream journal and the epoch it leads under."""
    section = cfg["coordinator"]
    if journal is None:
        journal = Journal(lamconfig.state_path("coordinator", "journal", section["journal"]),
                          float(section["journal_days"]))
    coordinator = Coordinator(BrokerSettings.from_config(cfg), build_parser(cfg), journal,
                              Settings.from_config(section), epoch=epoch, may_connect=may_connect)
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
        if ClusterSettings.from_config(cfg).enabled:
            return lead_or_stand_by(cfg)
        coordinator = build(cfg)
    except lamconfig.ConfigError as exc:
        print(f"lam-coordinator: {exc}", file=sys.stderr)
        return 2
    coordinator.start()
    run_service(coordinator.bus.ready.is_set, coordinator.stop, "coordinator")
    return 0


def lead_or_stand_by(cfg: dict) -> int:
    """On a cluster: stand by until this coordinator holds the lease, then lead (README: A standby coordinator)."""
    leadership = Leadership(cfg, lambda journal, epoch, may_connect: build(cfg, journal, epoch, may_connect))
    leadership.start()
    run_service(leadership.ready, leadership.stop, "coordinator")
    return 0


if __name__ == "__main__":
    sys.exit(main())
