"""A Redis master, its replica and three Sentinels, all `redis-server` processes of the test's own on
free loopback ports (append-only files fsynced on every write), that a test can SIGKILL the master of."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from processes import free_port, wait_for
from redis.sentinel import Sentinel

MASTER_NAME = "ukcancel"
DOWN_AFTER_MS = 2000  # what the docs' Compose profile and Kubernetes values use


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@dataclass
class SentinelSet:
    directory: Path
    data_ports: list[int] = field(default_factory=lambda: [free_port(), free_port()])
    sentinel_ports: list[int] = field(default_factory=lambda: [free_port(), free_port(), free_port()])
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def binary(self) -> str:
        return shutil.which("redis-server") or "/usr/bin/redis-server"

    def _start_data(self, port: int, replica_of: int | None) -> None:
        data = self.directory / f"redis-{port}"
        data.mkdir(exist_ok=True)
        argv = [self.binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                "--hash-max-listpack-value", "1024"]
        if replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        log = (self.directory / f"redis-{port}.log").open("ab")
        self.processes[port] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: _answers(f"redis://127.0.0.1:{port}/0"), 20, f"redis-server on {port}")

    def _start_sentinel(self, port: int, master_port: int) -> None:
        conf = self.directory / f"sentinel-{port}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        log = (self.directory / f"sentinel-{port}.log").open("ab")
        self.processes[port] = subprocess.Popen([self.binary, str(conf), "--sentinel"], stdout=log,
                                                stderr=subprocess.STDOUT)

    def start(self) -> None:
        master, replica = self.data_ports
        self._start_data(master, None)
        self._start_data(replica, master)
        for port in self.sentinel_ports:
            self._start_sentinel(port, master)
        wait_for(self._settled, 60, "the Sentinels to know the replica and each other")

    def _settled(self) -> bool:
        try:
            for port in self.sentinel_ports:
                client = redis.Redis(port=port, socket_connect_timeout=1, decode_responses=True)
                state = client.sentinel_master(MASTER_NAME)
                if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                    return False
            replication = redis.Redis(port=self.data_ports[0]).info("replication")
            return any(str(v).find("online") >= 0 for k, v in replication.items() if k.startswith("slave"))
        except (redis.RedisError, KeyError):
            return False

    @property
    def sentinels(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def env(self, database: int = 0) -> dict[str, str]:
        """Settings through Sentinel; REDIS_URL names the first master, but only its database counts."""
        return {
            "REDIS_URL": f"redis://127.0.0.1:{self.data_ports[0]}/{database}",
            "UKCANCEL_REDIS_SENTINELS": self.sentinels,
            "UKCANCEL_REDIS_SENTINEL_MASTER": MASTER_NAME,
        }

    def master_port(self) -> int:
        sentinel = Sentinel([("127.0.0.1", p) for p in self.sentinel_ports], socket_timeout=1)
        return int(sentinel.discover_master(MASTER_NAME)[1])

    def client(self) -> redis.Redis:
        """A client that follows the master, as the service's own does."""
        sentinel = Sentinel([("127.0.0.1", p) for p in self.sentinel_ports], socket_timeout=2)
        return sentinel.master_for(MASTER_NAME, socket_timeout=5)

    def kill_master(self) -> tuple[int, float]:
        """SIGKILL the current master; (its port, when)."""
        port = self.master_port()
        process = self.processes[port]
        killed_at = time.time()
        process.send_signal(signal.SIGKILL)
        process.wait(15)
        return port, killed_at

    def restart_as_replica(self, port: int) -> None:
        """Bring a killed node back as a replica of the current master (as an orchestrator would)."""
        self._start_data(port, self.master_port())

    def replicas_online(self) -> int:
        try:
            return int(self.client().info("replication").get("connected_slaves", 0))
        except redis.RedisError:
            return 0

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(15)

    def logs(self) -> str:
        return "".join(f"\n--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
                       for path in sorted(self.directory.glob("*.log")))
