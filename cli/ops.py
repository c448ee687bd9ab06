"""Running LAMControl for real: lam systemd install, lam mosquitto-config, lam agents forget.

* lam systemd install writes sandboxed system units for the broker, coordinator and
  bridge (or, with --user, the lam-agent@.service template for the desktop session)
  and a config per component, then prints the commands that enable them.
* lam mosquitto-config writes a Mosquitto configuration for a home network: no
  anonymous access, one user per component with a generated password, an ACL that keeps
  each agent to its own tasks, presence and results, and a TLS listener when given a
  certificate.
* lam agents forget ID clears every retained message an agent left (presence, spec, and
  anything retained under its topics), its last result and its Home Assistant entities.
* lam nats-config writes the same users and rules for a NATS cluster (three nodes, say) whose
  MQTT front end is the broker and whose JetStream holds the coordinators' lease and journal.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lamcontrol import config as lamconfig
from lamcontrol.cluster import Names
from lamcontrol.protocol import DEFAULT_MAX_PAYLOAD, Presence, PresenceState, ProtocolError, Topics, check_id, parse

from .console import EXIT_FAILED, EXIT_OK, broker_options, collect_retained, config_option, connect, settings_from


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add systemd install, mosquitto-config and agents forget to lam."""
    systemd = sub.add_parser("systemd", help="install systemd units for this machine")
    systemd_sub = systemd.add_subparsers(dest="systemd_command", required=True)
    install = systemd_sub.add_parser("install", parents=[config_option()],
                                     help="write units and configs, print how to enable them")
    install.add_argument("--broker-url", help="the broker URL written into the configs (default: [broker] url of "
                                              "the config file)")
    install.add_argument("--user", action="store_true", help="install the agent as a user service of the desktop "
                                                             "session instead of the system services")
    install.add_argument("--dry-run", action="store_true", help="print what would be written, write nothing")
    install.add_argument("--prefix", default="/", help="root to write under, for packaging (default: /)")
    install.add_argument("--agent-id", help="id of this machine's agent (--user; default: the host name)")
    install.add_argument("--capability", "-c", action="append",
                         help="capabilities of this machine's agent (--user; default: every installed one)")
    install.add_argument("--no-broker", action="store_true", help="no lam-broker unit (Mosquitto is the broker)")
    install.add_argument("--no-bridge", action="store_true", help="no lam-bridge unit")
    install.add_argument("--credentials", help="the credentials folder lam mosquitto-config wrote: each component "
                                               "then logs in as its own MQTT user")
    install.set_defaults(func=cmd_systemd_install)

    mosq = sub.add_parser("mosquitto-config", parents=[config_option()],
                          help="write a hardened Mosquitto configuration")
    mosq.add_argument("--out", required=True, help="folder for mosquitto.conf, passwd, acl and credentials/")
    mosq.add_argument("--users", help="comma-separated: coordinator, bridge, homeassistant, monitor, "
                                      "agent:ID:cap1+cap2, client:NAME (default: the four, plus an agent for this "
                                      "host with every installed capability)")
    mosq.add_argument("--listen", default="127.0.0.1:1883", help="plain listener, host:port ('' for none; "
                                                                  "default 127.0.0.1:1883)")
    mosq.add_argument("--tls-listen", default="0.0.0.0:8883", help="TLS listener when --cert is given")
    mosq.add_argument("--cert", help="server certificate (PEM) for the TLS listener")
    mosq.add_argument("--key", help="private key of --cert")
    mosq.add_argument("--client-ca", help="CA that signs client certificates (clients must then present one)")
    mosq.add_argument("--owner", help="user the broker runs as, who must read passwd and acl and write "
                                      "persistence/ (default: mosquitto, when running as root)")
    mosq.add_argument("--legacy-results", action="store_true", help="agents may also write results under "
                                                                     "lam/results/# (for agents from before the move "
                                                                     "to lam/agents/<id>/results/)")
    mosq.set_defaults(func=cmd_mosquitto_config)

    nats = sub.add_parser("nats-config", parents=[config_option()],
                          help="write a NATS cluster's configs: MQTT for the house, JetStream for the coordinators")
    nats.add_argument("--out", required=True, help="folder for one config per node, users and credentials/")
    nats.add_argument("--nodes", required=True,
                      help="comma-separated NAME=HOST (the address the other nodes reach it at), e.g. "
                           "pc=192.168.1.20,nas=192.168.1.21,pi=192.168.1.22; NAME=HOST:CLIENT:CLUSTER:MQTT sets "
                           f"its ports (default {NATS_PORTS[0]}, {NATS_PORTS[1]}, {NATS_PORTS[2]})")
    nats.add_argument("--users", help="as for mosquitto-config (default: the same)")
    nats.add_argument("--bind", default="0.0.0.0", help="address every node listens on (default 0.0.0.0)")
    nats.add_argument("--store", default="/var/lib/nats/lamcontrol", help="JetStream's folder on each node")
    nats.set_defaults(func=cmd_nats_config)

    agents = sub.choices["agents"]
    agents_sub = agents.add_subparsers(dest="agents_command")
    forget = agents_sub.add_parser("forget", parents=[config_option(), broker_options()],
                                   help="remove an agent: clear every retained message under its topics and its Home "
                                        "Assistant entities")
    forget.add_argument("agent_id", metavar="ID", help="the agent to forget")
    forget.add_argument("--force", action="store_true", help="even when the agent says it is online")
    forget.set_defaults(func=cmd_agents_forget)


# -- lam agents forget ------------------------------------------------------------------

def cmd_agents_forget(args: argparse.Namespace) -> int:
    from lamcontrol.coordinator.discovery import Configs

    try:
        agent_id = check_id(args.agent_id, "agent id")
    except ProtocolError as exc:
        print(f"lam agents forget: {exc}", file=sys.stderr)
        return EXIT_FAILED
    cfg = lamconfig.load(args.config, args.broker)
    settings = settings_from(args)
    status_topic = settings.topics.agent_status(agent_id)
    found = collect_retained(args, status_topic).get(status_topic)
    if not found:
        print(f"no agent {agent_id} is known on this broker; clearing whatever it may have left", file=sys.stderr)
    else:
        try:
            online = parse(Presence, found).state == PresenceState.ONLINE
        except ProtocolError:
            online = False
        if online and not args.force:
            print(f"agent {agent_id} says it is online: stop it first (or use --force)", file=sys.stderr)
            return EXIT_FAILED
    # Its presence and spec, anything else retained under its topics (results it should never have
    # retained) and the coordinator's record of its last result; Home Assistant's entities first:
    # while they exist they read the presence, and must never see it empty.
    left = collect_retained(args, settings.topics.build("agents/{agent}/#", agent=agent_id), strays=True)
    topics = sorted({status_topic, settings.topics.agent_spec(agent_id), settings.topics.last_result(agent_id), *left})
    if cfg["homeassistant"]["enabled"]:
        topics = Configs(settings.topics, cfg["homeassistant"]["discovery_prefix"]).agent_topics(agent_id) + topics
    bus = connect(args, {}, "lam-cli")
    try:
        for topic in topics:
            sent = bus.publish_raw(topic, b"", retain=True)
            if sent is not None:
                sent.wait_for_publish(args.connect_timeout)
    finally:
        bus.stop()
    print(f"forgot agent {agent_id} ({len(topics)} retained topics cleared)")
    return EXIT_OK


# -- lam mosquitto-config ---------------------------------------------------------------

COMPONENTS = ("coordinator", "bridge", "homeassistant", "monitor")


def agent_acl(agent_id: str, capabilities: list[str], topics: Topics, legacy_results: bool = False) -> list[str]:
    """An agent's ACL section: it reads its capabilities' tasks and the coordinator's status (to
    announce itself again to a coordinator that comes online), and writes its presence, its spec,
    its results (one level under its ``results/``) and error reports, nothing else; with
    ``legacy_results`` also ``<prefix>/results/#``, for agents older than the results move.

    Mosquitto cannot refuse the retain flag on one topic: an agent may still retain a message where
    it may write, but only its presence and spec are kept on purpose; one retained on a results or
    error topic is cleared by the coordinator, which asks the broker for such strays every minute
    (lamcontrol.bus), and ``message_size_limit`` and ``memory_limit`` bound what it can cost meanwhile."""
    legacy = [f"topic write {topics.build('results/#')}"] if legacy_results else []
    own = [topics.agent_status(agent_id), topics.agent_spec(agent_id), topics.result(agent_id, "+")]
    return [f"user {agent_id}", *(f"topic read {topics.task(c)}" for c in capabilities),
            f"topic read {topics.coordinator_status}", *(f"topic write {topic}" for topic in own), *legacy,
            f"topic write {topics.errors}"]


@dataclass
class MqttUser:
    """One MQTT login and the topics it may use."""

    name: str
    capabilities: list[str] = field(default_factory=list)  # agents only
    kind: str = "component"  # component, agent, or client (a person's `lam send`, `lam monitor`, scripts)

    def acl(self, topics: Topics, discovery: str, legacy_results: bool = False) -> list[str]:
        """This user's ACL section."""
        if self.kind == "agent":
            return agent_acl(self.name, self.capabilities, topics, legacy_results)
        lam = topics.all
        rules = {"coordinator": [f"readwrite {lam}", f"readwrite {discovery}/#"],
                 "bridge": [f"read {lam}", f"write {topics.prompts}", f"write {topics.errors}"],
                 "homeassistant": [f"readwrite {discovery}/#", f"read {lam}", f"write {topics.prompts}",
                                   f"write {topics.coordinator_request}"],
                 "monitor": [f"read {lam}", f"read {discovery}/#", "read $SYS/#"]}
        own = rules[self.name] if self.kind == "component" else [f"read {lam}", f"write {topics.prompts}"]
        return [f"user {self.name}", *(f"topic {rule}" for rule in own)]


def parse_users(spec: str) -> list[MqttUser]:
    """``coordinator,agent:desk:browser+computer,...`` as users; ValueError says what is wrong."""
    users: dict[str, MqttUser] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        if item.startswith("agent:"):
            parts = item.split(":")
            if len(parts) != 3 or not parts[1] or not parts[2]:
                raise ValueError(f"{item!r}: write an agent as agent:ID:capability+capability")
            name = check_id(parts[1], "agent id")
            if name in COMPONENTS:
                raise ValueError(f"{item!r}: an agent may not be called {name}")
            user = MqttUser(name, [check_id(c, "capability") for c in parts[2].split("+")], "agent")
        elif item.startswith("client:"):
            name = check_id(item.partition(":")[2], "client name")
            if name in COMPONENTS:
                raise ValueError(f"{item!r}: a client may not be called {name}")
            user = MqttUser(name, kind="client")
        elif item in COMPONENTS:
            user = MqttUser(item)
        else:
            raise ValueError(f"{item!r}: users are {', '.join(COMPONENTS)}, agent:ID:cap1+cap2 or client:NAME")
        if user.name in users:
            raise ValueError(f"user {user.name} is listed twice")
        users[user.name] = user
    if not users:
        raise ValueError("no users given")
    return list(users.values())


def user_spec(user: MqttUser) -> str:
    """The user as an item of a --users list."""
    if user.kind == "agent":
        return f"agent:{user.name}:{'+'.join(user.capabilities)}"
    return f"client:{user.name}" if user.kind == "client" else user.name


def default_users() -> str:
    capabilities = "+".join(lamconfig.installed_capabilities()) or "echo"
    return ",".join([*COMPONENTS, f"agent:{lamconfig.default_agent_id()}:{capabilities}"])


QUEUED_BYTES = 64 * 1024 * 1024
MEMORY_LIMIT = 512 * 1024 * 1024

# Mosquitto 2.0 applies this to the listener above it (before any listener, it opens a default
# one on port 1883 of every interface), so it follows each listener line.
BOUND_IDS = ["# A client's id is its user name: no login can take over another's session; each user",
             "# has one connection at a time (give every tool that runs alongside a user of its own).",
             "use_username_as_clientid true"]


def mosquitto_conf(out: Path, listen: str, tls_listen: str, cert: str, key: str, client_ca: str,
                   max_payload: int = DEFAULT_MAX_PAYLOAD) -> str:
    lines = ["# Mosquitto for LAMControl, written by `lam mosquitto-config`: every component logs in",
             "# as its own user and the ACL keeps it to its own topics.",
             "per_listener_settings false", "allow_anonymous false",
             f"password_file {out / 'passwd'}", f"acl_file {out / 'acl'}",
             "", "# Queued tasks, results and retained presence survive a broker restart. The folder must be",
             "# writable by the broker's user, or Mosquitto silently runs without persistence.",
             "persistence true", f"persistence_location {out / 'persistence'}/", "autosave_interval 30",
             "", "# Without it a QoS 1 round trip waits on Nagle's algorithm for tens of milliseconds.",
             "set_tcp_nodelay true",
             "", "# Limits: a client that stops reading, or a flood, costs a bounded amount. A subscriber that",
             "# falls behind keeps up to 100000 messages or 64 MiB (the default of 1000 silently drops",
             "# messages for a coordinator busy with a burst of prompts). A message larger than [broker]",
             "# max_payload, which every component refuses anyway, is dropped (message_size_limit; a",
             "# packet over max_packet_size would cost its sender the connection). The broker as a whole",
             "# stays under 512 MiB; a persistent session not back within two weeks (a forgotten agent)",
             "# ends.",
             "max_queued_messages 100000", f"max_queued_bytes {QUEUED_BYTES}", "max_inflight_messages 100",
             f"message_size_limit {max_payload}", f"max_packet_size {max(262144, max_payload + 4096)}",
             f"memory_limit {MEMORY_LIMIT}",
             "persistent_client_expiration 14d"]
    if listen:
        host, port = lamconfig.host_port(listen, "--listen")
        about = ("# Plain MQTT on this machine only." if lamconfig.is_loopback(host) else
                 "# Plain MQTT open to the network: users and passwords are required, but travel unencrypted;"
                 "\n# give --cert and --key for a TLS listener where the network is not trusted.")
        lines += ["", about, f"listener {port} {host}", *BOUND_IDS]
    if cert:
        host, port = lamconfig.host_port(tls_listen, "--tls-listen")
        lines += ["", "# MQTT over TLS for the rest of the network.", f"listener {port} {host}", *BOUND_IDS,
                  f"certfile {Path(cert).resolve()}", f"keyfile {Path(key).resolve()}", "tls_version tlsv1.2"]
        if client_ca:
            lines += [f"cafile {Path(client_ca).resolve()}", "require_certificate true"]
    return "\n".join(lines) + "\n"


def acl_file(users: list[MqttUser], topics: Topics, discovery: str, legacy_results: bool = False) -> str:
    lines = ["# LAMControl topic rules, one section per user (user names come from the password file).",
             "# Agents read only the tasks of their capabilities and write only their own presence,",
             "# spec and results (agents/<id>/status, spec, results/<task>) and error reports."]
    for user in users:
        lines += ["", *user.acl(topics, discovery, legacy_results)]
    return "\n".join(lines) + "\n"


def credentials(folder: Path, users: list[MqttUser]) -> dict[str, str]:
    """A password per user: kept from an earlier run, else generated; each in a 0600 file."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    passwords = {}
    for user in users:
        path = folder / user.name
        password = path.read_text().strip() if path.is_file() else ""
        if not password:
            password = lamconfig.new_secret(24)
            lamconfig.write_private(path, password + "\n")
        passwords[user.name] = password
    return passwords


def write_password_file(path: Path, passwords: dict[str, str]) -> None:
    """Hash the passwords into a Mosquitto password file (``mosquitto_passwd -U``: none on a command line)."""
    tool = shutil.which("mosquitto_passwd")
    if not tool:
        raise lamconfig.ConfigError("mosquitto_passwd is missing: install the mosquitto package")
    fd, plain = tempfile.mkstemp(dir=path.parent, prefix=".passwd-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.writelines(f"{user}:{password}\n" for user, password in passwords.items())
        done = subprocess.run([tool, "-U", plain], capture_output=True, text=True)
        if done.returncode != 0:
            raise lamconfig.ConfigError(f"mosquitto_passwd failed: {done.stderr.strip() or done.stdout.strip()}")
        os.replace(plain, path)
    finally:
        if os.path.exists(plain):
            os.unlink(plain)


def broker_owner(explicit: str | None) -> pwd.struct_passwd | None:
    """The account that must read passwd and acl; None when it is us."""
    name = explicit or ("mosquitto" if os.geteuid() == 0 else "")
    if not name:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        if explicit:
            raise lamconfig.ConfigError(f"--owner {name}: no such user") from None
        return None


def cmd_mosquitto_config(args: argparse.Namespace) -> int:
    cfg = lamconfig.load(args.config)
    topics = Topics(cfg["broker"]["prefix"])
    discovery = cfg["homeassistant"]["discovery_prefix"]
    try:
        users = parse_users(args.users or default_users())
        if bool(args.cert) != bool(args.key):
            raise ValueError("--cert and --key go together")
        if not args.listen and not args.cert:
            raise ValueError("the broker needs a listener: give --listen, or --cert and --key")
        for name, value in (("--cert", args.cert), ("--key", args.key), ("--client-ca", args.client_ca)):
            if value and not Path(value).is_file():
                raise ValueError(f"{name} {value} does not exist")
        out = Path(args.out).expanduser().resolve()
        conf = mosquitto_conf(out, args.listen, args.tls_listen, args.cert, args.key, args.client_ca,
                              cfg["broker"]["max_payload"])
    except (ValueError, ProtocolError) as exc:
        print(f"lam mosquitto-config: {exc}", file=sys.stderr)
        return EXIT_FAILED
    owner = broker_owner(args.owner)
    try:
        out.mkdir(parents=True, exist_ok=True)
        passwords = credentials(out / "credentials", users)
        write_password_file(out / "passwd", passwords)
        (out / "acl").write_text(acl_file(users, topics, discovery, args.legacy_results))
        (out / "mosquitto.conf").write_text(conf)
        lamconfig.write_private(out / "users", ",".join(map(user_spec, users)) + "\n")
        (out / "persistence").mkdir(mode=0o700, exist_ok=True)
        for name in ("passwd", "acl"):
            (out / name).chmod(0o600)
        for name in ("passwd", "acl", "persistence"):
            if owner:
                os.chown(out / name, owner.pw_uid, owner.pw_gid)
    except OSError as exc:
        print(f"lam mosquitto-config: cannot write {exc.filename or out}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {out / 'mosquitto.conf'}, passwd and acl for {', '.join(u.name for u in users)}\n"
          f"passwords (one file per user, mode 0600): {out / 'credentials'}/\n\n"
          f"run it:        mosquitto -c {out / 'mosquitto.conf'}\n"
          f"or include it: ln -s {out / 'mosquitto.conf'} /etc/mosquitto/conf.d/lamcontrol.conf\n\n"
          f"each component's config then says who it is, e.g.\n"
          f"  [broker]\n  username = \"coordinator\"\n  password_file = \"{out / 'credentials' / 'coordinator'}\"\n"
          f"or: lam systemd install --credentials {out / 'credentials'}\n"
          f"another machine's agent: lam join NAME --mosquitto {out}")
    return EXIT_OK


# -- lam nats-config -----------------------------------------------------------------

NATS_PORTS = (4222, 6222, 1883)  # NATS clients (the coordinators' lease and journal), cluster routes, MQTT
NATS_CONF = "nats-server.conf"  # the name Debian's nats-server unit reads, in /etc
NATS_ACK_WAIT = "5s"  # below a coordinator's failover time, far above its time to handle a message


@dataclass
class NatsNode:
    """One server of the cluster: its name, the address the others reach it at, its ports."""

    name: str
    host: str
    client: int = NATS_PORTS[0]
    cluster: int = NATS_PORTS[1]
    mqtt: int = NATS_PORTS[2]


def parse_nodes(spec: str) -> list[NatsNode]:
    """``pc=192.168.1.20,pi=192.168.1.22:4222:6222:1883`` as nodes; ValueError says what is wrong."""
    nodes: list[NatsNode] = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, address = item.partition("=")
        host, *ports = address.split(":")
        if not sep or not host or len(ports) not in (0, 3) or not all(p.isdigit() for p in ports):
            raise ValueError(f"{item!r}: write a node as NAME=HOST or NAME=HOST:CLIENT:CLUSTER:MQTT")
        node = NatsNode(check_id(name, "node name"), host, *map(int, ports))
        if any(n.name == node.name for n in nodes):
            raise ValueError(f"node {node.name} is listed twice")
        nodes.append(node)
    if not nodes:
        raise ValueError("no nodes given")
    return nodes


def nats_subjects(mqtt_filter: str) -> list[str]:
    """The NATS subjects an MQTT topic filter covers: ``/`` is ``.``, ``+`` is ``*``; ``a/#`` is both
    ``a`` and ``a.>`` (MQTT's ``#`` also matches its parent level)."""
    levels = ["*" if level == "+" else ">" if level == "#" else level for level in mqtt_filter.split("/")]
    parent = [".".join(levels[:-1])] if levels[-1] == ">" and len(levels) > 1 else []
    return [*parent, ".".join(levels)]


def nats_permissions(user: MqttUser, topics: Topics, discovery: str) -> dict[str, list[str]]:
    """The user's Mosquitto ACL as NATS permissions, plus what NATS's MQTT front end needs (its QoS 1
    subscriptions deliver on ``$MQTT.sub.>``) and, for the coordinator, JetStream: its API, the
    lease and the journal."""
    allowed: dict[str, list[str]] = {"publish": [], "subscribe": ["$MQTT.sub.>"]}
    for rule in user.acl(topics, discovery)[1:]:
        _, access, mqtt_filter = rule.split(" ", 2)
        if mqtt_filter.startswith("$SYS"):
            continue  # Mosquitto's own statistics; NATS has none under MQTT
        for kind, needed in (("subscribe", "read"), ("publish", "write")):
            if needed in access:
                allowed[kind] += [s for s in nats_subjects(mqtt_filter) if s not in allowed[kind]]
    if user.kind == "component" and user.name == "coordinator":
        names = Names(topics.prefix)
        allowed["publish"] += ["$JS.API.>", "$JS.FC.>", "$JS.ACK.>", names.lease_subject, names.journal_subject]
        allowed["subscribe"] += ["_INBOX.>"]
    return allowed


def hash_for_nats(password: str) -> str:
    """A bcrypt hash, which nats-server checks passwords against."""
    try:
        import bcrypt
    except ImportError:
        raise lamconfig.ConfigError("lam nats-config needs bcrypt: pip install 'lamcontrol[cluster]'") from None
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(11)).decode()


def quoted(items: list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def nats_conf(node: NatsNode, nodes: list[NatsNode], users: list[MqttUser], hashes: dict[str, str], route: str,
              topics: Topics, discovery: str, bind: str, store: str) -> str:
    """One node's nats-server configuration."""
    routes = [f"nats-route://route:{route}@{other.host}:{other.cluster}" for other in nodes if other is not node]
    replicas = min(3, len(nodes))
    lines = [f"# NATS for LAMControl: node {node.name} of {len(nodes)}, written by `lam nats-config`. It holds",
             "# passwords for the cluster's routes: keep it readable by the nats user only.",
             f'server_name: "{node.name}"', f'listen: "{bind}:{node.client}"', "",
             "# JetStream keeps MQTT sessions, retained and QoS 1 messages, and the coordinators' lease and journal.",
             "jetstream {", f'  store_dir: "{store}/{node.name}"', "}", "",
             "cluster {", '  name: "lamcontrol"', f'  listen: "{bind}:{node.cluster}"',
             f'  authorization {{ user: "route", password: "{hashes["route"]}" }}', f"  routes: {quoted(routes)}",
             "}", "", "# The house's MQTT broker. Topics may not contain '.' or spaces; MQTT 3.1.1 only.",
             "mqtt {", f'  listen: "{bind}:{node.mqtt}"', f"  stream_replicas: {replicas}",
             "  # A QoS 1 message a client took and never acknowledged (a coordinator killed meanwhile) goes",
             "  # out again after this, to whoever resumes the session: 30 s by default.",
             f'  ack_wait: "{NATS_ACK_WAIT}"', "}", "",
             "# One user per component; agents reach only their capabilities' tasks and their own subtree,",
             "# like the Mosquitto ACL of `lam mosquitto-config`. Only the coordinator speaks NATS besides MQTT.",
             "authorization {", "  users: ["]
    for user in users:
        permissions = nats_permissions(user, topics, discovery)
        kinds = ["STANDARD", "MQTT"] if user.kind == "component" and user.name == "coordinator" else ["MQTT"]
        lines += [f'    {{user: "{user.name}", password: "{hashes[user.name]}", allowed_connection_types: '
                  f'{quoted(kinds)},', f'     permissions: {{publish: {quoted(permissions["publish"])},',
                  f'                   subscribe: {quoted(permissions["subscribe"])}}}}}']
    return "\n".join([*lines, "  ]", "}"]) + "\n"


def cmd_nats_config(args: argparse.Namespace) -> int:
    cfg = lamconfig.load(args.config)
    topics = Topics(cfg["broker"]["prefix"])
    discovery = cfg["homeassistant"]["discovery_prefix"]
    try:
        users = parse_users(args.users or default_users())
        nodes = parse_nodes(args.nodes)
        if "." in topics.prefix or " " in topics.prefix or "." in discovery:
            raise ValueError("NATS refuses '.' and spaces in MQTT topics: [broker] prefix and the discovery "
                             "prefix may have neither")
        if "route" in {u.name for u in users}:
            raise ValueError("the user name route is the cluster's own")
    except (ValueError, ProtocolError) as exc:
        print(f"lam nats-config: {exc}", file=sys.stderr)
        return EXIT_FAILED
    out = Path(args.out).expanduser().resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        passwords = credentials(out / "credentials", [*users, MqttUser("route")])
        hashes = {name: hash_for_nats(password) for name, password in passwords.items()}
        for node in nodes:
            conf = nats_conf(node, nodes, users, hashes, passwords["route"], topics, discovery, args.bind, args.store)
            lamconfig.write_private(out / node.name / NATS_CONF, conf)
        lamconfig.write_private(out / "users", ",".join(map(user_spec, users)) + "\n")
        # The same rules in Mosquitto's format, beside credentials/ as lam mosquitto-config lays them out:
        # the coordinator reads there what each agent may offer.
        (out / "acl").write_text(acl_file(users, topics, discovery))
    except OSError as exc:
        print(f"lam nats-config: cannot write {exc.filename or out}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    except lamconfig.ConfigError as exc:
        print(f"lam nats-config: {exc}", file=sys.stderr)
        return EXIT_FAILED
    mqtt = ",".join(f"{n.host}:{n.mqtt}" for n in nodes)
    nats = ",".join(f"nats://{n.host}:{n.client}" for n in nodes)
    print(f"wrote {', '.join(str(out / n.name / NATS_CONF) for n in nodes)} for "
          f"{', '.join(u.name for u in users)}\npasswords (one file per user, mode 0600): {out / 'credentials'}/\n\n"
          f"on each node, with its own file (Debian: apt install nats-server):\n"
          f"  sudo install -o nats -m 600 {out}/NODE/{NATS_CONF} /etc/{NATS_CONF}\n"
          f"  sudo install -d -o nats {args.store} && sudo systemctl restart nats-server\n\n"
          f"each component's config then lists every node, e.g. the coordinator's\n"
          f"  [broker]\n  url = \"mqtt://{mqtt}\"\n  username = \"coordinator\"\n"
          f"  password_file = \"{out / 'credentials' / 'coordinator'}\"\n  [cluster]\n  nats = \"{nats}\"")
    return EXIT_OK


# -- lam systemd install ----------------------------------------------------------------

SANDBOX = """\
DynamicUser=yes
User=lamcontrol
Group=lamcontrol
StateDirectory=lamcontrol
StateDirectoryMode=0750
ConfigurationDirectory=lamcontrol
UMask=0077
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome={protect_home}
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
CapabilityBoundingSet=
SystemCallArchitectures=native
"""

HEADER = "# Written by `lam systemd install`, with the paths of the machine it ran on.\n"

SYSTEM_UNIT = HEADER + """\
[Unit]
Description={description}
After=network-online.target{after}
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={bindir}/{script} --config {confdir}/{name}.toml
Restart=on-failure
RestartSec=5
WatchdogSec=60
TimeoutStopSec=30
Environment=PYTHONUNBUFFERED=1
{credential}{sandbox}
[Install]
WantedBy=multi-user.target
"""

AGENT_UNIT = HEADER + """\
[Unit]
Description=LAMControl agent %i (in the desktop session)
After=graphical-session.target network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={bindir}/lam-agent --id %i --config %E/lamcontrol/agent-%i.toml
Restart=on-failure
RestartSec=5
WatchdogSec=60
TimeoutStopSec=30
Environment=PYTHONUNBUFFERED=1
NoNewPrivileges=yes

[Install]
WantedBy=default.target
"""

SERVICES = {  # unit name -> (description, console script, ordering after other units)
    "broker": ("LAMControl MQTT broker (embedded aMQTT)", "lam-broker", ""),
    "coordinator": ("LAMControl coordinator", "lam-coordinator", " lam-broker.service mosquitto.service"),
    "bridge": ("LAMControl HTTP bridge for the Rabbit R1", "lam-bridge", " lam-broker.service mosquitto.service"),
}
SYSTEM_UNIT_DIR, SYSTEM_CONF_DIR = Path("/etc/systemd/system"), Path("/etc/lamcontrol")
CREDENTIAL, ACL = "mqtt-password", "mqtt-acl"


def script_dir() -> Path:
    """Where this installation's console scripts are."""
    return Path(sysconfig.get_path("scripts"))


def system_unit(name: str, bindir: Path, confdir: Path = SYSTEM_CONF_DIR, credential: Path | None = None,
                acl: Path | None = None) -> str:
    """The sandboxed ``lam-<name>.service`` text; ``acl``: the broker's ACL, which the coordinator reads
    (as a credential: the service's own user may not read the broker's files)."""
    description, script, after = SERVICES[name]
    under_home = str(bindir).startswith(("/home/", "/root/"))
    loaded = "".join(f"LoadCredential={key}:{path}\n" for key, path in ((CREDENTIAL, credential), (ACL, acl)) if path)
    return SYSTEM_UNIT.format(description=description, after=after, bindir=bindir, script=script, confdir=confdir,
                              name=name, credential=loaded,
                              sandbox=SANDBOX.format(protect_home="read-only" if under_home else "yes"))


def agent_unit(bindir: Path) -> str:
    """The ``lam-agent@.service`` user template; ``%i`` is the agent id and names its config."""
    return AGENT_UNIT.format(bindir=bindir)


def toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def component_config(url: str, prefix: str, username: str = "", password_file: str = "",
                     capabilities: list[str] | None = None, ca_file: str = "", acl_file: str = "") -> str:
    lines = ["# Written by LAMControl; every key is described in docs/configuration.md.", "[broker]",
             f"url = {toml_string(url)}", f"prefix = {toml_string(prefix)}"]
    if username:
        lines += [f"username = {toml_string(username)}", f"password_file = {toml_string(password_file)}"]
    if ca_file:
        lines.append(f"ca_file = {toml_string(ca_file)}")
    if capabilities is not None:
        lines += ["", "[agent]", "capabilities = [" + ", ".join(toml_string(c) for c in capabilities) + "]"]
    if acl_file:
        lines += ["", "[coordinator]", f"acl_file = {toml_string(acl_file)}"]
    return "\n".join(lines) + "\n"


@dataclass
class Planned:
    """A file to write: where, what, and how private."""

    path: Path
    text: str
    mode: int = 0o644
    keep: bool = False  # an existing file is left alone (a config the person may have edited)


def system_plan(args: argparse.Namespace, url: str, prefix: str, bindir: Path) -> tuple[list[Planned], list[str]]:
    names = [n for n in SERVICES if not (n == "broker" and args.no_broker or n == "bridge" and args.no_bridge)]
    credentials = Path(args.credentials).resolve() if args.credentials else None
    files = []
    for name in names:
        secret = SYSTEM_CONF_DIR / f"{name}.password" if credentials and name != "broker" else None
        # The ACL lam mosquitto-config wrote beside the credentials: what each agent's login may read.
        acl = credentials.parent / "acl" if credentials and name == "coordinator" else None
        acl = acl if acl and acl.is_file() else None
        unit = system_unit(name, bindir, credential=secret, acl=acl)
        files.append(Planned(SYSTEM_UNIT_DIR / f"lam-{name}.service", unit))
        if secret and credentials:
            files.append(Planned(secret, read_credential(credentials, name), 0o600))
            config = component_config(url, prefix, name, f"/run/credentials/lam-{name}.service/{CREDENTIAL}",
                                      acl_file=f"/run/credentials/lam-{name}.service/{ACL}" if acl else "")
        else:
            config = component_config(url, prefix)
        files.append(Planned(SYSTEM_CONF_DIR / f"{name}.toml", config, keep=True))
    units = " ".join(f"lam-{n}.service" for n in names)
    return files, ["systemctl daemon-reload", f"systemctl enable --now {units}", "journalctl -f -u 'lam-*'"]


def user_plan(args: argparse.Namespace, url: str, prefix: str, bindir: Path) -> tuple[list[Planned], list[str]]:
    agent_id = check_id(args.agent_id or lamconfig.default_agent_id(), "agent id")
    home = Path.home()
    confdir = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    capabilities = args.capability or lamconfig.installed_capabilities()
    files = [Planned(confdir / "systemd" / "user" / "lam-agent@.service", agent_unit(bindir))]
    if args.credentials:
        secret = confdir / "lamcontrol" / f"agent-{agent_id}.password"
        files.append(Planned(secret, read_credential(Path(args.credentials), agent_id), 0o600))
        config = component_config(url, prefix, agent_id, str(secret), capabilities)
    else:
        config = component_config(url, prefix, capabilities=capabilities)
    files.append(Planned(confdir / "lamcontrol" / f"agent-{agent_id}.toml", config, keep=True))
    return files, ["systemctl --user daemon-reload",
                   "systemctl --user import-environment DISPLAY XAUTHORITY WAYLAND_DISPLAY",
                   f"systemctl --user enable --now lam-agent@{agent_id}.service",
                   f"journalctl --user -f -u lam-agent@{agent_id}.service"]


def read_credential(folder: Path, user: str) -> str:
    path = folder / user
    if not path.is_file():
        raise lamconfig.ConfigError(f"{path} does not exist: run lam mosquitto-config with a user {user}")
    return path.read_text()


def rooted(prefix: str, path: Path) -> Path:
    return Path(prefix) / path.relative_to(path.anchor)


def cmd_systemd_install(args: argparse.Namespace) -> int:
    cfg = lamconfig.load(args.config, args.broker_url)
    bindir = script_dir()
    try:
        plan = user_plan if args.user else system_plan
        files, commands = plan(args, cfg["broker"]["url"], cfg["broker"]["prefix"], bindir)
    except ProtocolError as exc:
        print(f"lam systemd install: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for planned in files:
        target = rooted(args.prefix, planned.path)
        if planned.keep and target.exists():
            print(f"keeping {target} (already there; delete it to have it written again)")
            continue
        if args.dry_run:
            shown = "(secret, not shown)" if planned.mode == 0o600 else planned.text
            print(f"--- would write {target}\n{shown}")
            continue
        try:
            lamconfig.write_private(target, planned.text, planned.mode)
        except OSError as exc:
            print(f"lam systemd install: cannot write {target}: {exc.strerror} "
                  f"(run it as root, or use --user or --prefix DIR)", file=sys.stderr)
            return EXIT_FAILED
        print(f"wrote {target}")
    if not args.user and str(bindir).startswith(("/home/", "/root/")):
        print(f"\nwarning: the services run as their own user, who cannot read {bindir}; install LAMControl "
              f"outside home folders first, as the README's Install section says", file=sys.stderr)
    print("\nenable them:\n  " + "\n  ".join(commands))
    return EXIT_OK
