"""``lam-coordinator``: parse prompts, route tasks to agents, answer every prompt."""

from __future__ import annotations

import logging
import sqlite3
import sys
from typing import Callable

from lamcontrol import config as lamconfig
from lamcontrol.bus import BrokerSettings
from lamcontrol.cluster import ClusterSettings
from lamcontrol.service import component_parser, run_service, setup_logging

from . import control, discovery, metrics, single
from .journal import Journal, StreamJournal
from .leader import Leadership
from .parsing import build_parser
from .service import Coordinator
from .settings import Settings
from .trust import Trust

log = logging.getLogger("lam-coordinator")


EXTENSIONS = (control.extension, discovery.extension, metrics.extension)  # each: the config -> a factory, or None when off


def build(cfg: dict, journal: Journal | StreamJournal | None = None, epoch: int = 0,
          may_connect: Callable[[], bool] = lambda: True) -> Coordinator:
    """A coordinator configured from a loaded config, with the extensions the config turns on; on a
    cluster, with the stream journal and the epoch it leads under."""
    section = cfg["coordinator"]
    if journal is None:
        path = lamconfig.state_path("coordinator", "journal", section["journal"])
        try:
            journal = Journal(path, float(section["journal_days"]), int(section["journal_max_prompts"]))
        except (OSError, sqlite3.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise lamconfig.ConfigError(f"cannot write the journal {path} ({reason}): make its folder writable, or "
                                        f"name another file with --journal or [coordinator] journal") from None
    broker = BrokerSettings.from_config(cfg)
    trust = Trust.from_config(cfg, broker)
    log.info("%s", trust.describe())
    coordinator = Coordinator(broker, build_parser(cfg), journal, Settings.from_config(section), trust=trust,
                              approved_specs=map(str, section["approved_specs"]), epoch=epoch,
                              may_connect=may_connect)
    for configured in EXTENSIONS:
        factory = configured(cfg)
        if factory is not None:
            coordinator.extend(factory)
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
        if ClusterSettings.from_config(cfg).enabled:  # coordinators take turns: a second one stands by
            return lead_or_stand_by(cfg)
        journal = lamconfig.state_path("coordinator", "journal", cfg["coordinator"]["journal"])
        lock = single.claim(journal, BrokerSettings.from_config(cfg))  # noqa: F841 (held while the process runs)
        coordinator = build(cfg)
    except (lamconfig.ConfigError, single.AnotherCoordinator) as exc:
        print(f"lam-coordinator: {exc}", file=sys.stderr)
        return 2
    coordinator.start()
    return run_service(coordinator.bus.ready.is_set, coordinator.stop, "coordinator", coordinator.bus.gave_up)


def lead_or_stand_by(cfg: dict) -> int:
    """On a cluster: stand by until this coordinator holds the lease, then lead (docs/operations.md, "A standby coordinator")."""
    leadership = Leadership(cfg, lambda journal, epoch, may_connect: build(cfg, journal, epoch, may_connect))
    leadership.start()
    return run_service(leadership.ready, leadership.stop, "coordinator")


if __name__ == "__main__":
    sys.exit(main())
